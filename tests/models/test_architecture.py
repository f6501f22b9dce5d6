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


def test_activation_checkpointing_trains_the_same_step():
    """Rematerialised blocks: the same loss and the same SGD step as plain blocks."""
    import numpy as np

    from kerasft import testing
    from kerasft.recipes import LoRA
    from tests.conftest import to_numpy

    model = tiny_causal_lm("gemma3")
    recipe = LoRA(rank=2, alpha=4)
    recipe.apply(model)
    x, y, w = testing.random_token_batch()
    start = [to_numpy(v).copy() for v in model.trainable_variables]
    results = []
    for checkpointing in (False, True):
        for v, s in zip(model.trainable_variables, start):
            v.assign(s)
        recipe.compile(model, optimizer=keras.optimizers.SGD(1.0), activation_checkpointing=checkpointing)
        assert architecture.activation_checkpointing(model) is checkpointing
        loss = model.train_on_batch(x, y, sample_weight=w)
        results.append((loss, [to_numpy(v) - s for v, s in zip(model.trainable_variables, start)]))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
    for got, want in zip(results[1][1], results[0][1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert any(np.abs(step).max() > 0 for step in results[0][1])
