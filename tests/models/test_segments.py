"""Packed rows give every token the logits it gets with its document alone."""

import numpy as np
import pytest

from kerasft import testing, training_forward
from kerasft.data.packing import pack_examples
from kerasft.models import segments
from kerasft.recipes import LoRA, PrefixTuning
from tests.conftest import to_numpy

# Document lengths: the third is longer than the tiny Gemma 3's sliding window (4).
LENGTHS = (5, 3, 6)


def _documents(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, testing.TINY_VOCABULARY_SIZE, n).astype("int32") for n in LENGTHS]


def _packed_row(documents, sequence_length=16):
    examples = [(d, np.ones(len(d), "float32")) for d in documents]
    ids, _, lengths, segment_ids = pack_examples(
        examples, sequence_length - 1, return_segment_ids=True
    )
    assert len(ids) == 1  # all three share the row
    return {
        "token_ids": ids,
        "padding_mask": np.arange(ids.shape[1])[None] < lengths[:, None],
        "segment_ids": segment_ids,
    }


def _perturbed(model, recipe):
    """`model` with `recipe` applied and its trainable weights moved off the identity."""
    if recipe is None:
        return model
    recipe.apply(model)
    rng = np.random.default_rng(1)
    for variable in model.trainable_variables:
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    return model


RECIPES = {"base": lambda: None, "lora": lambda: LoRA(rank=2, alpha=4),
           "prefix": lambda: PrefixTuning(num_virtual_tokens=3)}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_packed_row_equals_each_document_alone(model_kind, recipe):
    model = _perturbed(testing.tiny_causal_lm(model_kind), RECIPES[recipe]())
    training_forward.install(model)
    documents = _documents()
    x = _packed_row(documents)
    packed = to_numpy(model(x))[0]
    plain = to_numpy(model({k: x[k] for k in ("token_ids", "padding_mask")}))[0]
    start = 0
    for document in documents:
        alone = to_numpy(model({"token_ids": document[None], "padding_mask": np.ones((1, len(document)), bool)}))[0]
        np.testing.assert_allclose(packed[start:start + len(document)], alone, atol=1e-4)
        start += len(document)
    # Without segment ids the later documents see the earlier ones.
    assert np.abs(plain[LENGTHS[0]:start] - packed[LENGTHS[0]:start]).max() > 1e-2


def test_packed_training_loss_equals_the_documents_alone(model_kind):
    """The chunked training loss of a packed row = the token mean over the documents alone."""
    model = testing.tiny_causal_lm(model_kind)
    training_forward.install(model)
    documents = _documents(seed=3)
    x = _packed_row(documents)
    labels = np.zeros_like(x["token_ids"])
    labels[:, :-1] = x["token_ids"][:, 1:]
    weights = np.zeros(labels.shape, "float32")
    start, total, count = 0, 0.0, 0
    for document in documents:
        end = start + len(document)
        weights[0, start:end - 1] = 1.0  # next tokens inside the document
        logits = to_numpy(model({"token_ids": document[None], "padding_mask": np.ones((1, len(document)), bool)}))[0]
        logits = logits.astype("float64")[:-1]
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        total -= np.take_along_axis(log_probs, document[1:, None], -1).sum()
        count += len(document) - 1
        start = end
    hidden = model(x, training=True)[training_forward.HIDDEN_STATES]
    loss, _, _ = training_forward.weighted_token_loss(
        model.backbone.token_embedding, hidden, labels, weights
    )
    np.testing.assert_allclose(float(to_numpy(loss)), total / count, rtol=1e-5)


def test_positions_restart_per_document_and_mask_is_block_causal():
    segment_ids = np.array([[1, 1, 1, 2, 2, 3, 0, 0]], "int32")
    np.testing.assert_array_equal(
        to_numpy(segments.segment_positions(segment_ids)), [[0, 1, 2, 0, 1, 0, 0, 1]]
    )
    mask = to_numpy(segments.packed_attention_mask(segment_ids, segment_ids > 0))[0]
    want = np.zeros((8, 8), bool)
    for a, b in ((0, 3), (3, 5), (5, 6)):
        want[a:b, a:b] = np.tril(np.ones((b - a, b - a), bool))
    np.testing.assert_array_equal(mask, want)


def test_the_context_leaves_the_model_as_it_was(model_kind):
    model = testing.tiny_causal_lm(model_kind)
    x = {"token_ids": np.ones((1, 6), "int32"), "padding_mask": np.ones((1, 6), bool)}
    before = to_numpy(model(x))
    with segments.packed_rows(model, np.array([[1, 1, 2, 2, 2, 3]])):
        pass
    np.testing.assert_array_equal(to_numpy(model(x)), before)
    assert not any("_compute_attention_mask" in vars(b) for b in model.backbone.transformer_layers)
