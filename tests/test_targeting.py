import pytest

from kerasft import testing
from kerasft.targeting import find_target_layers, path_matches


@pytest.mark.parametrize(
    "path,target,expected",
    [
        ("decoder_block_3/attention/query", "query", True),
        ("decoder_block_3/attention/query_norm", "query", False),
        ("decoder_block_1/attention/value", "decoder_block_1*/attention/value", True),
        ("decoder_block_12/attention/value", "decoder_block_1*/attention/value", True),
        ("decoder_block_2/attention/value", "decoder_block_1*/attention/value", False),
        ("decoder_block_0/attention/attention_output", "attention", True),
        ("decoder_block_0/ffw_gating_2", "mlp", True),
        ("decoder_block_0/ffw_gating_2", "attention", False),
        ("decoder_block_0/ffw_linear", "all-linear", True),
    ],
)
def test_path_matching(path, target, expected):
    assert path_matches(path, target) is expected


def test_shortcuts_select_the_gemma_kernels(model_kind):
    model = testing.tiny_causal_lm(model_kind)
    attention = find_target_layers(model, "attention")
    mlp = find_target_layers(model, "mlp")
    every = find_target_layers(model, "all-linear")
    assert len(attention) == 8 and len(mlp) == 6
    assert set(every) == set(attention) | set(mlp)
    assert "decoder_block_1/attention/attention_output" in attention


@pytest.mark.parametrize("targets", [[], [""], [3]])
def test_malformed_targets_are_refused(targets):
    model = testing.tiny_causal_lm("gemma")
    with pytest.raises(ValueError, match="targets="):
        find_target_layers(model, targets)


def test_a_wrapped_target_is_named_with_the_recipe_that_wrapped_it():
    from kerasft.recipes import LoRA

    model = testing.tiny_causal_lm("gemma")
    LoRA(targets=("query",)).apply(model)
    with pytest.raises(ValueError, match=r"already carry an adapter.*LoRADense, recipe lora at paths "
                                         r"\['decoder_block_0/attention/query'"):
        find_target_layers(model, ["attention"])
    assert set(find_target_layers(model, ["key"])) == {
        "decoder_block_0/attention/key", "decoder_block_1/attention/key"
    }


def test_a_wrapper_around_a_non_dense_layer_leaves_the_dense_layers_inside_it_targetable():
    from kerasft.recipes import LoRA, PrefixTuning

    model = testing.tiny_causal_lm("gemma")
    PrefixTuning(2, reparameterize=False).apply(model)
    LoRA(rank=2, targets=("all-linear",)).apply(model)
    from kerasft.recipes.lora import lora_layers

    assert len(lora_layers(model)) == 14
