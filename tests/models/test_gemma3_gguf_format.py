"""The Gemma 3 GGUF layout: tensor specs both ways, and the backbone config from metadata."""

import keras_hub
import numpy as np
import pytest

from kerasft.models import write_gemma3_gguf
from kerasft.models.gemma3_gguf_format import gemma3_backbone_config_from_gguf
from kerasft.models.gemma3_gguf_format import gemma3_gguf_tensor_names
from kerasft.models.gemma3_gguf_format import gemma3_gguf_tensor_specs
from kerasft.models.gguf_reader import read_gguf


@pytest.fixture(scope="module")
def metadata(causal_lm, tmp_path_factory):
    path = write_gemma3_gguf(causal_lm, tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return read_gguf(path).metadata


def test_specs_name_every_weight_in_gguf_order_and_convert_both_ways(causal_lm):
    backbone = causal_lm.backbone
    specs = gemma3_gguf_tensor_specs(backbone)
    assert [spec.name for spec in specs] == gemma3_gguf_tensor_names(6)
    assert len(specs) == len(backbone.weights) == 2 + 6 * 13
    kinds = {spec.name: spec.kind for spec in specs}
    assert kinds["blk.0.attn_q.weight"] == "qkv" and kinds["output_norm.weight"] == "norm"
    for spec in specs:
        value = np.asarray(spec.variable.numpy(), np.float32)
        stored = spec.from_keras(value)
        assert stored.shape == spec.gguf_shape, spec.name
        if spec.kind == "norm":  # stored as 1 + w: float32 rounding on the way back
            np.testing.assert_array_equal(stored, value + 1.0)
            error = np.abs(spec.to_keras(stored) - value)
            assert np.all(error <= np.spacing(np.abs(stored))), spec.name  # one ulp of 1 + w
        else:  # transposes and reshapes only
            np.testing.assert_array_equal(spec.to_keras(stored), value)


def test_config_from_written_metadata_rebuilds_the_backbone_config(causal_lm, metadata):
    config = gemma3_backbone_config_from_gguf(metadata)
    assert config["vocabulary_size"] is None  # the loader fills it from token_embd
    config["vocabulary_size"] = causal_lm.backbone.vocabulary_size
    rebuilt = keras_hub.models.Gemma3Backbone(**config)
    assert {**rebuilt.get_config(), "name": None} == {
        **causal_lm.backbone.get_config(), "name": None
    }


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"general.architecture": "llama"}, r"general.architecture='llama'"),
        ({"gemma3.feed_forward_length": [64, 128, 64, 64, 64, 64]}, r"feed_forward_length=\[64, 128"),
        ({"gemma3.attention.value_length": 8}, r"key_length=16, value_length=8"),
        ({"gemma3.rope.freq_base": 10_000.0}, r"rope.freq_base=10000.0"),
        ({"gemma3.rope.scaling.type": "yarn"}, r"rope.scaling.type='yarn'"),
        ({"gemma3.block_count": None}, r"no `gemma3.block_count`"),
    ],
)
def test_config_refuses_what_gemma3_backbone_cannot_express(metadata, edit, message):
    edited = {**metadata, **edit}
    edited = {key: value for key, value in edited.items() if value is not None}
    with pytest.raises(ValueError, match=message):
        gemma3_backbone_config_from_gguf(edited)
