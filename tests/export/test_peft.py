"""kerasft LoRA <-> PEFT, checked against transformers + peft on the exported base."""

import json

import numpy as np
import pytest

from kerasft import testing
from kerasft.export.hf import export_hf
from kerasft.export.peft import load_peft_adapter, save_peft_adapter
from kerasft.recipes import LoRA
from kerasft.targeting import adapter_wrappers
from tests.conftest import to_numpy
from tests.export.conftest import exportable_causal_lm, perturb_adapters

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

RECIPES = {
    "lora": lambda: LoRA(rank=2, alpha=3.0, targets=["all-linear"]),
    "rslora-glob": lambda: LoRA(rank=4, alpha=2.0, targets=["decoder_block_1*"], use_rslora=True,
                                rank_pattern={"decoder_block_1/attention/query": 3}),
    "dora": lambda: LoRA(rank=2, alpha=4.0, targets=["attention", "mlp"], use_dora=True),
}


def hf_logits(model, x):
    with torch.no_grad():
        return model(
            torch.tensor(np.asarray(x["token_ids"])).long(),
            attention_mask=torch.tensor(np.asarray(x["padding_mask"])).long(),
        ).logits.numpy()


def real_positions(array, x):
    return array[np.asarray(x["padding_mask"], bool)]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_exported_adapter_in_peft_gives_the_kerasft_logits(kind, name, tmp_path):
    model = exportable_causal_lm(kind)
    x, _, _ = testing.random_token_batch()
    export_hf(model, tmp_path / "base")
    RECIPES[name]().apply(model)
    perturb_adapters(model)
    expected = to_numpy(model(x))
    save_peft_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["use_dora"] == (name == "dora")

    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    with torch.no_grad():
        plain = hf_logits(base.eval(), x)
    tuned = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    got = hf_logits(tuned, x)
    # The adapter matters: without it the logits are far off.
    assert np.abs(real_positions(plain - expected, x)).max() > 1e-2
    np.testing.assert_allclose(real_positions(got, x), real_positions(expected, x), atol=1e-4)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_a_peft_trained_adapter_imported_gives_peft_logits(kind, use_dora, tmp_path):
    model = exportable_causal_lm(kind)
    x, _, _ = testing.random_token_batch()
    export_hf(model, tmp_path / "base")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    config = peft.LoraConfig(
        r=3, lora_alpha=5, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=use_dora,
        use_rslora=not use_dora, rank_pattern={"down_proj": 2}, init_lora_weights=False,
    )
    tuned = peft.get_peft_model(base, config).eval()
    tuned.save_pretrained(tmp_path / "peft")
    expected = hf_logits(tuned, x)

    load_peft_adapter(model, tmp_path / "peft")
    wrappers = adapter_wrappers(model)
    assert len(wrappers) == 3 * 2
    assert {w.rank for w in wrappers if w.target_path.endswith("ffw_linear")} == {2}
    got = to_numpy(model(x))
    np.testing.assert_allclose(real_positions(got, x), real_positions(expected, x), atol=1e-4)

    # And back: kerasft's export of the imported adapter is PEFT's own.
    save_peft_adapter(model, tmp_path / "again")
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    again = load_file(str(tmp_path / "again" / "adapter_model.safetensors"))
    assert sorted(saved) == sorted(again)
    for key in saved:
        np.testing.assert_allclose(again[key], saved[key], atol=1e-7, err_msg=key)


def test_what_peft_cannot_hold_is_refused(tmp_path):
    from kerasft.recipes import IA3

    model = exportable_causal_lm("gemma3")
    IA3().apply(model)
    with pytest.raises(ValueError, match="one LoRA.*Received: model with recipes \\['ia3'\\]"):
        save_peft_adapter(model, tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "fan_in_fan_out": True}))
    (tmp_path / "bad" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="fan_in_fan_out=True"):
        load_peft_adapter(exportable_causal_lm("gemma3"), tmp_path / "bad")
