"""`python -m kerasft.finetune` runs the dpo, reward_model and grpo configs (tiny model)."""

import pytest

from kerasft.adapters import read_adapter_config
from kerasft.finetune.runner import load_config, run

SMALL = {
    "dpo": ["data.train_examples=8", "data.eval_examples=4"],
    "reward_model": ["data.train_examples=8", "data.eval_examples=4"],
    "grpo": ["training.steps=1", "training.prompts_per_step=2", "data.eval_examples=4",
             "recipe.max_new_tokens=2"],
}


@pytest.mark.slow  # three end-to-end runs: about a minute
@pytest.mark.parametrize("name", sorted(SMALL))
def test_config_runs_saves_and_reloads(name, tmp_path):
    overrides = ["model.name=tiny", f"output_dir={tmp_path}", *SMALL[name]]
    result = run(load_config(f"recipes/configs/{name}.yaml", overrides))
    assert read_adapter_config(tmp_path / "adapter")["method"] == ("reward_model" if name == "reward_model" else "lora")
    assert (tmp_path / "metrics.json").is_file()
    if name == "grpo":
        assert len(result["training"]["mean_reward_per_step"]) == 1
        assert 0.0 <= result["after"]["mean_reward"] <= 1.0
    else:
        assert result["reload_max_abs_difference"] < 1e-5
        assert result["training"]["pairs"] == 8
        if name == "dpo":  # at the identity start every margin is 0: a tie, 0.5
            assert result["recipe"].method == "dpo"


def test_unknown_reward_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown reward name 'exact'"):
        run(load_config("recipes/configs/grpo.yaml",
                        ["model.name=tiny", f"output_dir={tmp_path}", "recipe.reward_fns=[exact]"]))
