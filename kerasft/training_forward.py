"""The training forward pass of a causal LM: logits only where the loss needs them.

Gemma's tied output projection (262,144 tokens) is most of the forward
arithmetic, and a plain `fit` computes it at every position, also at prompt
and padding positions whose loss weight is 0, and holds the whole
`[batch, sequence, vocabulary]` float32 tensor. `install(model)` changes what
`fit` does on this one model instance, and nothing else:

- in training (`training=True`, as `fit`'s train step calls it) the model
  returns `{"hidden_states": backbone(x)}` instead of logits;
- `compute_loss` gathers the positions with nonzero sample weight first
  (a stable sort, so the shapes stay static for JAX), and runs the output
  projection, the final soft cap (the token embedding's own reverse call,
  exactly what keras-hub's causal LM does) and a float32 log-softmax on
  `chunk_size` positions at a time; chunks past the last weighted position are
  skipped (`ops.cond`), and each chunk is rematerialised (`keras.remat`), so
  only one chunk's logits ever exist, also in the backward pass;
- `compute_metrics` gets the weighted next-token accuracy from the same
  chunks (no second projection);
- inputs with `segment_ids` (and optionally `positions`), as kerasft's
  packers make them, run per document (`kerasft.models.segments`), in
  training and in `model(x)` / `predict`.

`model(x)`, `predict`, `evaluate` and `generate` are untouched and see full
logits. `uninstall(model)` undoes it. The loss equals Keras's
`SparseCategoricalCrossentropy(from_logits=True)` on full logits with the
same reduction (`"mean_with_sample_weight"` or `"sum_over_batch_size"`), so
`kerasft.losses.TokenNormalizedBatches` stays exact.
"""

from typing import Any

import keras
from keras import ops

from kerasft.models import architecture, segments

_STATE = "_kerasft_weighted_logits"
HIDDEN_STATES = "hidden_states"
_CORRECT = "next_token_correct"
_WEIGHTS = "next_token_weights"
_LOGITS = "logits"


def is_causal_lm(model: Any) -> bool:
    """Whether `model` is a keras-hub causal LM whose logits are `embedding(backbone(x), reverse=True)`."""
    try:
        import keras_hub
    except ImportError:  # pragma: no cover
        return False
    return (
        isinstance(model, keras_hub.models.CausalLM)
        and architecture.has_backbone(model)
        and architecture.token_embedding(model) is not None
    )


def is_installed(model: Any) -> bool:
    """Whether `install` is in effect on `model`."""
    return getattr(model, _STATE, None) is not None


def install(model: Any, token_mean: bool = True, chunk_size: int = 128, recompute: bool = True):
    """Makes `model.fit` compute logits only at weighted positions, in chunks.

    Call it after `model.compile` (kerasft's `Recipe.compile` does, for the
    default causal-LM loss and metrics). Installing again replaces the settings.

    Args:
        model: a keras-hub causal LM (see `is_causal_lm`).
        token_mean: divide the weighted loss sum by the sum of the weights
            (True) or by `batch * length` (False, for
            `TokenNormalizedBatches`).
        chunk_size: positions whose logits are computed at once.
        recompute: rematerialise each chunk's logits in the backward pass
            (memory of one chunk) instead of keeping every chunk's softmax.

    Returns:
        `model`.

    Raises:
        ValueError: if `model` is not a keras-hub causal LM, or `chunk_size`
            is not a positive integer.
    """
    if not is_causal_lm(model):
        raise ValueError(
            "`model` must be a keras-hub causal LM with a backbone and a token embedding. "
            f"Received: model of type {type(model).__name__}"
        )
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer. Received: chunk_size={chunk_size!r}")
    settings = {
        "token_mean": bool(token_mean),
        "chunk_size": chunk_size,
        "recompute": bool(recompute),
        # A later plain `model.compile(loss=...)` must win: the chunked loss
        # runs only while the compiled loss is still this one.
        "loss": model.loss,
    }
    if not is_installed(model):
        # Instance attributes shadow the class's methods for this model only;
        # keras's train steps call `self.call` / `self.compute_loss` /
        # `self.compute_metrics` (Keras 3.15, JAX and torch trainers).
        object.__setattr__(model, "call", _training_call(model, type(model).call.__get__(model)))
        object.__setattr__(model, "compute_loss", _compute_loss(model, type(model).compute_loss.__get__(model)))
        object.__setattr__(
            model, "compute_metrics", _compute_metrics(type(model).compute_metrics.__get__(model))
        )
    object.__setattr__(model, _STATE, settings)
    return model


def uninstall(model: Any) -> None:
    """Removes what `install` changed (a no-op if it was not installed)."""
    if not is_installed(model):
        return
    for name in ("call", "compute_loss", "compute_metrics", _STATE):
        model.__dict__.pop(name, None)


def _training_call(model, original_call):
    def call(inputs, training=None, mask=None):
        inputs, segment_ids, positions = segments.split_packed(inputs)
        with segments.packed_rows_if_any(model, segment_ids, positions):
            if training is True:
                return {HIDDEN_STATES: architecture.backbone(model)(inputs, training=True)}
            return original_call(inputs, training=training, mask=mask)

    return call


def _compute_loss(model, original_compute_loss):
    def compute_loss(x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not (isinstance(y_pred, dict) and HIDDEN_STATES in y_pred):
            return original_compute_loss(x, y, y_pred, sample_weight, training=training)
        settings = getattr(model, _STATE)
        if model.loss is not settings["loss"]:
            # Recompiled with another loss since `install`: full logits for it.
            logits = architecture.token_embedding(model)(y_pred[HIDDEN_STATES], reverse=True)
            y_pred[_LOGITS] = logits
            return original_compute_loss(x, y, logits, sample_weight, training=training)
        loss, correct, weights = weighted_token_loss(
            architecture.token_embedding(model),
            y_pred[HIDDEN_STATES],
            y,
            sample_weight,
            token_mean=settings["token_mean"],
            chunk_size=settings["chunk_size"],
            recompute=settings["recompute"],
        )
        # The metrics read the accuracy from the same chunks: `y_pred` is the
        # very dict the train step hands on to `compute_metrics` (in JAX as
        # the auxiliary output of its value_and_grad).
        y_pred[_CORRECT] = correct
        y_pred[_WEIGHTS] = weights
        for extra in model.losses:  # regularisers and add_loss, as Keras adds them
            loss = loss + model._aggregate_additional_loss(extra)
        return loss

    return compute_loss


def _compute_metrics(original_compute_metrics):
    def compute_metrics(x, y, y_pred, sample_weight=None):
        if not (isinstance(y_pred, dict) and HIDDEN_STATES in y_pred):
            return original_compute_metrics(x, y, y_pred, sample_weight)
        if _LOGITS in y_pred:
            return original_compute_metrics(x, y, y_pred[_LOGITS], sample_weight)
        correct = y_pred[_CORRECT]
        # Two-class "logits" whose argmax is 1 exactly where the prediction
        # was right: the compiled weighted SparseCategoricalAccuracy then
        # gives sum(w * correct) / sum(w), as on full logits.
        indicator = ops.stack([1.0 - correct, correct], axis=-1)
        labels = ops.ones(ops.shape(correct), dtype="int32")
        return original_compute_metrics(x, labels, indicator, y_pred[_WEIGHTS])

    return compute_metrics


def weighted_token_loss(
    embedding, hidden_states, labels, sample_weight=None, token_mean=True, chunk_size=128, recompute=True
):
    """Weighted next-token cross-entropy from hidden states, logits only where weighted.

    Args:
        embedding: the token embedding whose `reverse=True` call gives the
            logits (tied projection and soft cap, quantized or not).
        hidden_states: `(batch, sequence, hidden_dim)` final hidden states.
        labels: int `(batch, sequence)` next tokens.
        sample_weight: `(batch, sequence)` or `(batch,)` weights, or None (all 1).
        token_mean: see `install`.
        chunk_size: see `install`.
        recompute: see `install`.

    Returns:
        `(loss, correct, weights)`: the scalar loss, and per gathered
        position (weighted positions first, `n_chunks * chunk_size` of them)
        whether the argmax was the label and its weight (0 for filler).
    """
    batch, length = ops.shape(labels)[0], ops.shape(labels)[1]
    nll, correct, gathered_weights, _ = _gathered_terms(
        embedding, hidden_states, labels, sample_weight, chunk_size, recompute
    )
    loss = ops.sum(nll * gathered_weights)
    divisor = ops.sum(gathered_weights) if token_mean else ops.cast(batch * length, "float32")
    return ops.divide_no_nan(loss, divisor), correct, gathered_weights


def weighted_token_logprobs(embedding, hidden_states, labels, sample_weight, chunk_size=128, recompute=True):
    """`log softmax(logits)[label]` `(batch, sequence)` where the weight is nonzero, 0 elsewhere.

    The same gathered, chunked projection as `weighted_token_loss` (logits
    only at weighted positions), for losses built on per-token
    log-probabilities (GRPO's ratio and KL).

    Args:
        embedding: the token embedding whose `reverse=True` call gives the logits.
        hidden_states: `(batch, sequence, hidden_dim)` final hidden states.
        labels: int `(batch, sequence)` next tokens.
        sample_weight: `(batch, sequence)` weights (nonzero where needed).
        chunk_size: positions whose logits are computed at once.
        recompute: rematerialise each chunk in the backward pass.

    Returns:
        float32 `(batch, sequence)`.
    """
    batch, length = ops.shape(labels)[0], ops.shape(labels)[1]
    total = batch * length
    nll, _, gathered_weights, order = _gathered_terms(
        embedding, hidden_states, labels, sample_weight, chunk_size, recompute
    )
    logprobs = ops.where(ops.not_equal(gathered_weights, 0.0), -nll, 0.0)[:total]
    # `order[:total]` is a permutation: its inverse puts each position back.
    return ops.reshape(ops.take(logprobs, ops.argsort(order[:total]), axis=0), (batch, length))


def _gathered_terms(embedding, hidden_states, labels, sample_weight, chunk_size, recompute):
    """`(nll, correct, weights, order)` per gathered position, weighted positions first."""
    batch, length = ops.shape(labels)[0], ops.shape(labels)[1]
    total = batch * length
    hidden_dim = ops.shape(hidden_states)[-1]
    if sample_weight is None:
        weights = ops.ones((batch, length), dtype="float32")
    else:
        weights = ops.cast(sample_weight, "float32")
        if len(ops.shape(weights)) == 1:
            weights = ops.broadcast_to(weights[:, None], (batch, length))
    weights = ops.reshape(weights, (total,))
    flat_labels = ops.reshape(ops.cast(labels, "int32"), (total,))
    flat_hidden = ops.reshape(hidden_states, (total, hidden_dim))

    chunk = min(chunk_size, total)
    num_chunks = -(-total // chunk)
    padded = num_chunks * chunk
    # Weighted positions first, in their original order: a stable static-shape
    # gather (argsort of unique keys).
    positions = ops.arange(total, dtype="int32")
    keys = ops.where(ops.not_equal(weights, 0.0), positions, positions + total)
    order = ops.argsort(keys)
    if padded > total:
        order = ops.concatenate([order, ops.zeros((padded - total,), dtype="int32")])
    gathered_weights = ops.take(weights, order, axis=0)
    if padded > total:
        filler = ops.concatenate(
            [ops.ones((total,), "float32"), ops.zeros((padded - total,), "float32")]
        )
        gathered_weights = gathered_weights * filler
    gathered_hidden = ops.take(flat_hidden, order, axis=0)
    gathered_labels = ops.take(flat_labels, order, axis=0)
    num_weighted = ops.sum(ops.cast(ops.not_equal(gathered_weights, 0.0), "int32"))

    def chunk_terms(hidden, chunk_labels):
        logits = embedding(hidden[None], reverse=True)[0]
        logits = ops.cast(logits, "float32")
        picked = ops.take_along_axis(logits, chunk_labels[:, None], axis=-1)[:, 0]
        nll = ops.logsumexp(logits, axis=-1) - picked
        correct = ops.cast(ops.equal(ops.argmax(logits, axis=-1), chunk_labels), "float32")
        return nll, correct

    terms = keras.remat(chunk_terms) if recompute else chunk_terms
    nlls, corrects = [], []
    for index in range(num_chunks):
        span = slice(index * chunk, (index + 1) * chunk)
        hidden, chunk_labels = gathered_hidden[span], gathered_labels[span]
        nll, correct = ops.cond(
            ops.less(index * chunk, num_weighted),
            lambda h=hidden, c=chunk_labels: terms(h, c),
            lambda: (ops.zeros((chunk,), "float32"), ops.zeros((chunk,), "float32")),
        )
        nlls.append(nll)
        corrects.append(correct)
    nll = ops.concatenate(nlls) if num_chunks > 1 else nlls[0]
    correct = ops.concatenate(corrects) if num_chunks > 1 else corrects[0]
    return nll, correct, gathered_weights, order
