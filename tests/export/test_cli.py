"""`kerasft export` (kerasft.export.main) on the tiny model."""

import numpy as np
from safetensors.numpy import load_file

import kerasft
from kerasft.export import main
from kerasft.export.peft import save_peft_adapter
from kerasft.finetune.models import load_model
from kerasft.recipes import LoRA


def test_export_peft_from_an_adapter_folder_and_refusals_named(tmp_path, capsys):
    model = load_model("tiny")
    LoRA(rank=2, targets=["attention"]).apply(model)
    rng = np.random.default_rng(0)
    for variable in model.trainable_variables:
        variable.assign(rng.normal(0, 0.1, variable.shape).astype("float32"))
    kerasft.save_adapter(model, tmp_path / "adapter")
    save_peft_adapter(model, tmp_path / "direct")

    assert main(["--format", "peft", "--model", "tiny", "--adapter", str(tmp_path / "adapter"),
                 "--output", str(tmp_path / "cli")]) == 0
    direct = load_file(str(tmp_path / "direct" / "adapter_model.safetensors"))
    cli = load_file(str(tmp_path / "cli" / "adapter_model.safetensors"))
    assert sorted(cli) == sorted(direct) and len(cli) == 2 * 4 * 2
    for key in direct:
        np.testing.assert_array_equal(cli[key], direct[key])

    # The tiny model lacks Gemma 3's post norms, which transformers always applies.
    assert main(["--format", "hf", "--model", "tiny", "--adapter", str(tmp_path / "adapter"),
                 "--output", str(tmp_path / "hf")]) == 2
    assert "use_post_attention_norm=False" in capsys.readouterr().err
    assert main(["--format", "peft", "--model", "tiny", "--adapter", str(tmp_path / "adapter"),
                 "--adapter-name", "x", "--output", str(tmp_path / "x")]) == 2
    assert "--adapter-name picks one adapter" in capsys.readouterr().err.replace("`", "")
