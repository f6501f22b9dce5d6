"""kerasft.models.architecture: backbone, decoder blocks, embedding, kernel names."""

import keras
import pytest

from kerasft.models import architecture
from kerasft.testing import tiny_causal_lm


@pytest.mark.parametrize("kind", ["gemma", "gemma3"])
def test_finds_backbone_blocks_and_embedding_of_a_causal_lm(kind):
    model = tiny_causal_lm(kind, num_layers=3)
    assert architecture.backbone(model) is model.backbone
    assert architecture.backbone(model.backbone) is model.backbone
    assert architecture.has_backbone(model) and not architecture.has_backbone(model.backbone)
    blocks = architecture.decoder_blocks(model)
    assert blocks == list(model.backbone.transformer_layers) and len(blocks) == 3
    assert architecture.token_embedding(model) is model.backbone.token_embedding


@pytest.mark.parametrize("kind", ["gemma", "gemma3"])
def test_kernel_names_are_the_dense_layers_of_a_block(kind):
    block = architecture.decoder_blocks(tiny_causal_lm(kind))[0]
    names = {
        layer.name
        for layer in block._flatten_layers(include_self=False)
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
    }
    assert names == set(architecture.ATTENTION_LAYER_NAMES + architecture.MLP_LAYER_NAMES)


def test_a_model_without_blocks_is_refused_by_type():
    with pytest.raises(ValueError, match="Sequential"):
        architecture.decoder_blocks(keras.Sequential([keras.layers.Dense(2)]))
