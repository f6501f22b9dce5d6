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
