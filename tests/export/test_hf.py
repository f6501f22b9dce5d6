"""The merged transformers export gives the kerasft model-with-adapter logits."""

import numpy as np
import pytest

from kerasft import testing
from kerasft.export.hf import export_hf
from kerasft.recipes import IA3, LoRA, PromptTuning
from kerasft.recipes.qlora import QLoRA
from kerasft.targeting import adapter_wrappers
from tests.conftest import to_numpy, weights_by_path
from tests.export.conftest import exportable_causal_lm, perturb_adapters

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_logits(directory, x):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(
            torch.tensor(np.asarray(x["token_ids"])).long(),
            attention_mask=torch.tensor(np.asarray(x["padding_mask"])).long(),
        ).logits.numpy()


@pytest.mark.parametrize(
    "recipe",
    [lambda: LoRA(rank=2, targets=["all-linear"], use_rslora=True),
     lambda: LoRA(rank=2, use_dora=True), lambda: IA3()],
    ids=["rslora", "dora", "ia3"],
)
def test_merged_export_gives_the_adapted_logits_and_leaves_the_model(kind, recipe, tmp_path):
    model = exportable_causal_lm(kind)
    x, _, _ = testing.random_token_batch()
    mask = np.asarray(x["padding_mask"], bool)
    base = to_numpy(model(x))
    recipe().apply(model)
    perturb_adapters(model)
    expected = to_numpy(model(x))
    before = weights_by_path(model)
    export_hf(model, tmp_path)
    got = hf_logits(tmp_path, x)
    assert np.abs((base - expected)[mask]).max() > 1e-2
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4)
    # The exported model is a merged copy: the model keeps its adapters.
    assert adapter_wrappers(model)
    after = weights_by_path(model)
    assert sorted(after) == sorted(before)
    for path in before:
        np.testing.assert_array_equal(after[path], before[path], err_msg=path)


def test_what_transformers_cannot_load_is_refused(tmp_path):
    model = exportable_causal_lm("gemma3")
    QLoRA(rank=2, quantization="int8", group_size=8).apply(model)
    with pytest.raises(ValueError, match="quantized layers.*Merge a QLoRA adapter"):
        export_hf(model, tmp_path)
    assert not any(tmp_path.iterdir())

    prompt = exportable_causal_lm("gemma3")
    PromptTuning(num_virtual_tokens=3).apply(prompt)
    with pytest.raises(ValueError, match="would drop them|cannot be merged|do not merge"):
        export_hf(prompt, tmp_path / "prompt")

    with pytest.raises(ValueError, match="use_post_attention_norm=False"):
        export_hf(testing.tiny_causal_lm("gemma3"), tmp_path / "g3")
