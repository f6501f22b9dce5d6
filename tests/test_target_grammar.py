"""One target grammar: the shortcut words work wherever a target is taken."""

import numpy as np
import pytest

import kerasft
from kerasft.layers.lora import LoRADense
from kerasft.quantization.quantized_dense import QuantizedEinsumDense
from kerasft.recipes import LoRA, QLoRA
from kerasft.targeting import adapter_wrappers, iter_layers, path_matches
from kerasft.testing import tiny_causal_lm

ATTENTION = {"query", "key", "value", "attention_output"}
MLP = {"ffw_gating", "ffw_gating_2", "ffw_linear"}


def names(layers):
    return {layer.path.rsplit("/", 1)[-1] for layer in layers}


def quantized_names(model):
    return names(layer for layer in iter_layers(model) if isinstance(layer, QuantizedEinsumDense))


def test_qlora_takes_the_same_shortcut_in_targets_and_quantize_targets():
    model = tiny_causal_lm("gemma3")
    QLoRA(rank=2, targets=["attention"], quantize_targets=["attention"], group_size=8).apply(model)
    assert quantized_names(model) == ATTENTION
    assert names(w.layer for w in adapter_wrappers(model, LoRADense)) == ATTENTION


def test_quantize_takes_shortcuts_names_and_globs():
    model = tiny_causal_lm("gemma3")
    kerasft.quantize(model, "nf4", targets=["mlp"], group_size=8)
    assert quantized_names(model) == MLP
    model = tiny_causal_lm("gemma3")
    kerasft.quantize(model, "int8", targets=["query", "ffw_*"])
    assert quantized_names(model) == {"query"} | MLP


def test_rank_pattern_takes_shortcuts():
    model = tiny_causal_lm("gemma3")
    LoRA(rank=2, targets=["all-linear"], rank_pattern={"attention": 4}).apply(model)
    ranks = {w.target_path.rsplit("/", 1)[-1]: w.rank for w in adapter_wrappers(model, LoRADense)}
    assert {name for name, rank in ranks.items() if rank == 4} == ATTENTION
    assert {name for name, rank in ranks.items() if rank == 2} == MLP


@pytest.mark.parametrize(
    "target,path,expected",
    [
        ("query", "decoder_block_0/attention/query", True),
        ("attention", "decoder_block_0/attention/query", True),
        ("mlp", "decoder_block_0/ffw_gating_2", True),
        ("mlp", "decoder_block_0/attention/query", False),
        ("ffw_*", "decoder_block_0/ffw_linear", True),  # a glob on the name
        ("decoder_block_1*", "decoder_block_1/attention/value", True),  # a glob on the path
        ("decoder_block_1/*/value", "decoder_block_1/attention/value", True),
        ("decoder_block_1/*/value", "decoder_block_0/attention/value", False),
        ("que", "decoder_block_0/attention/query", False),
    ],
)
def test_one_grammar_for_names_globs_and_shortcuts(target, path, expected):
    assert path_matches(path, target) is expected


def test_a_quantize_target_that_matches_nothing_lists_the_paths():
    model = tiny_causal_lm("gemma3")
    with pytest.raises(ValueError, match=r"unmatched='atention'.*decoder_block_0/attention/query"):
        kerasft.quantize(model, "int8", targets=["atention"])
    assert not quantized_names(model)
    np.testing.assert_equal(len(model.backbone.transformer_layers), 2)
