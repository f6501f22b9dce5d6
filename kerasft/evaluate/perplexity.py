"""Token-weighted perplexity of a keras-hub causal LM, without full logits.

Gemma's 262,144-token vocabulary makes the `[batch, sequence, vocabulary]`
float32 logits the largest tensor of an evaluation step (8.6 GB at 8 x 1024).
`perplexity` never builds it: it runs the backbone once per batch, keeps the
hidden states of the positions that carry a nonzero sample weight (prompt and
padding positions are never projected), and projects those through the tied
output embedding `chunk_size` positions at a time.

Packed rows (batches whose `x` holds `segment_ids`, as
`kerasft.data.instruction_batches(pack=True)` and `packed_text_batches`
make them) run per document (`kerasft.models.segments.packed_rows`), so a
packed batch scores exactly as its examples one per row.
"""

import math
import weakref

import keras
import numpy as np
from keras import ops

from kerasft.evaluate._progress import Progress, iterate_batches, no_grad
from kerasft.models import architecture, segments


def perplexity(
    model: keras.Model,
    batches,
    *,
    chunk_size: int = 256,
    progress: bool = True,
) -> dict:
    """Token-weighted mean negative log-likelihood and perplexity.

    The loss is `sum(sample_weight * nll) / sum(sample_weight)` over every
    position of every batch: a batch with more scored tokens counts for more,
    unlike an average of per-batch means. `perplexity = exp(loss)`.

    Logits are computed exactly as `keras_hub` causal LMs compute them in
    `call`: `model.backbone.token_embedding(hidden, reverse=True)`, which also
    applies the final logit soft-cap (`backbone.final_logit_soft_cap`,
    `tanh(logits / cap) * cap`) when the backbone has one. The log-softmax is
    taken in float32 (a max-shifted log-sum-exp) whatever the model's dtype,
    and the sums are accumulated in float64.

    Args:
        model: A keras-hub causal LM (e.g. `keras_hub.models.Gemma3CausalLM`)
            with `model.backbone` returning hidden states and
            `model.backbone.token_embedding` the (tied) output embedding. The
            preprocessor, if any, is not used.
        batches: An iterable of `(x, y, sample_weight)` numpy batches, or a
            `keras.utils.PyDataset` yielding them: `x` is
            `{"token_ids": int [B, T], "padding_mask": bool [B, T]}` (and,
            for packed rows, `"segment_ids"` int [B, T], optionally
            `"positions"`), `y` int `[B, T]` next-token targets,
            `sample_weight` float `[B, T]` (0 for positions that are not
            scored).
        chunk_size: Number of scored positions whose `[chunk_size, vocabulary]`
            float32 logits exist at one time. At Gemma's vocabulary, 256
            positions take 268 MB.
        progress: Whether to show a `keras.utils.Progbar`.

    Returns:
        A dict with `loss` (mean NLL in nats per scored token, float),
        `perplexity` (`exp(loss)`, float) and `tokens` (number of positions
        with a nonzero sample weight, int).

    Raises:
        ValueError: If `chunk_size` is not a positive integer, a batch is not an
            `(x, y, sample_weight)` tuple of matching shapes, the model has no
            `backbone.token_embedding`, or no position has a nonzero weight.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"`chunk_size` must be a positive integer. Received: chunk_size={chunk_size!r}"
        )
    # A bare backbone is refused: its `call` returns hidden states, not logits.
    backbone = architecture.backbone(model) if architecture.has_backbone(model) else None
    embedding = None if backbone is None else architecture.token_embedding(model)
    if embedding is None:
        raise ValueError(
            "`model` must be a keras-hub causal LM with `model.backbone."
            "token_embedding` (the output projection). Received: "
            f"model={type(model).__name__} with backbone={type(backbone).__name__}"
        )

    scorer = _Scorer.for_model(backbone, embedding)
    iterator, num_batches = iterate_batches(batches)
    bar = Progress(num_batches, progress, unit_name="batch", values=("loss", "ppl"))
    total_nll = 0.0
    total_weight = 0.0
    tokens = 0
    with no_grad():
        for batch_index, batch in enumerate(iterator):
            x, y, sample_weight = _unpack_batch(batch, batch_index)
            nll, weight, count = _batch_nll(scorer, x, y, sample_weight, chunk_size)
            total_nll += nll
            total_weight += weight
            tokens += count
            running = total_nll / total_weight if total_weight else float("nan")
            bar.update(values=[("loss", running), ("ppl", _safe_exp(running))])
    if total_weight <= 0:
        raise ValueError(
            "No position has a nonzero `sample_weight`, so there is nothing to "
            f"score. Received: {tokens} scored tokens, total weight {total_weight}"
        )
    loss = total_nll / total_weight
    bar.finish(values=[("loss", loss), ("ppl", _safe_exp(loss))])
    return {"loss": loss, "perplexity": _safe_exp(loss), "tokens": tokens}


def _safe_exp(value):
    try:
        return math.exp(value)
    except OverflowError:
        return float("inf")


def _unpack_batch(batch, batch_index):
    """Checks one `(x, y, sample_weight)` batch and returns numpy parts."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise ValueError(
            "Every batch must be a tuple `(x, y, sample_weight)`. Received: "
            f"batch {batch_index} of type {type(batch).__name__}"
            + (f" with {len(batch)} elements" if isinstance(batch, (tuple, list)) else "")
        )
    x, y, sample_weight = batch
    if not isinstance(x, dict) or "token_ids" not in x:
        raise ValueError(
            "`x` must be a dict with 'token_ids' and 'padding_mask'. Received: "
            f"x of type {type(x).__name__} in batch {batch_index}"
        )
    y = np.asarray(y)
    sample_weight = np.asarray(sample_weight, dtype="float64")
    token_shape = tuple(np.shape(x["token_ids"]))
    if y.shape != token_shape or sample_weight.shape != token_shape:
        raise ValueError(
            "`y` and `sample_weight` must have the shape of `x['token_ids']`. "
            f"Received: token_ids.shape={token_shape}, y.shape={y.shape}, "
            f"sample_weight.shape={sample_weight.shape} in batch {batch_index}"
        )
    for key in segments.PACKED_KEYS:
        if key in x and tuple(np.shape(x[key])) != token_shape:
            raise ValueError(
                f"`x['{key}']` must have the shape of `x['token_ids']`. Received: "
                f"token_ids.shape={token_shape}, {key}.shape={tuple(np.shape(x[key]))} "
                f"in batch {batch_index}"
            )
    if "positions" in x and "segment_ids" not in x:
        raise ValueError(
            "`x['positions']` is read only with `x['segment_ids']` (packed rows). Received: "
            f"x with keys {sorted(x)} in batch {batch_index}"
        )
    if np.any(sample_weight < 0):
        raise ValueError(
            "`sample_weight` must be non-negative. Received: min "
            f"sample_weight={sample_weight.min()} in batch {batch_index}"
        )
    return x, y, sample_weight


def _padded_length(count, chunk_size):
    """`count` rounded up to a multiple of `chunk_size`, or to a power of two
    below it, so a compiled function sees few distinct shapes."""
    if count >= chunk_size:
        return -(-count // chunk_size) * chunk_size
    return min(chunk_size, 1 << (count - 1).bit_length())


_SCORERS = weakref.WeakKeyDictionary()


class _Scorer:
    """Hidden states and per-position NLL of a keras-hub causal LM.

    On JAX both steps are `jax.jit`-compiled stateless calls (eager JAX
    compiles every op on first use, which costs more than the model on small
    evaluations); on the other backends they run eagerly.
    """

    def __init__(self, backbone, embedding):
        # Weak references: the scorer is cached per backbone (so repeated
        # evaluations reuse the compiled functions) and must not keep it alive.
        self._backbone = weakref.ref(backbone)
        self._embedding = weakref.ref(embedding)
        self._jit = keras.config.backend() == "jax"
        if self._jit:
            import jax

            self._hidden = jax.jit(self._stateless_hidden)
            self._nll = jax.jit(self._stateless_nll)

    @property
    def backbone(self):
        return self._backbone()

    @property
    def embedding(self):
        return self._embedding()

    @classmethod
    def for_model(cls, backbone, embedding):
        """The cached scorer of `backbone`, rebuilt if its embedding changed."""
        from kerasft.adapter_switch import switch_count

        scorer = _SCORERS.get(backbone)
        if (scorer is None or scorer.embedding is not embedding
                or scorer.switches != switch_count()):
            scorer = cls(backbone, embedding)
            scorer.switches = switch_count()
            _SCORERS[backbone] = scorer
        return scorer

    def _stateless_hidden(self, trainable, non_trainable, x):
        x, segment_ids, positions = segments.split_packed(x)
        with segments.packed_rows_if_any(self.backbone, segment_ids, positions):
            hidden, _ = self.backbone.stateless_call(trainable, non_trainable, x, training=False)
        return hidden

    def _stateless_nll(self, trainable, non_trainable, hidden, targets):
        logits, _ = self.embedding.stateless_call(trainable, non_trainable, hidden, reverse=True)
        return _nll_from_logits(logits, targets)

    def hidden(self, x):
        x = {key: ops.convert_to_tensor(value) for key, value in x.items()}
        if not self._jit:
            x, segment_ids, positions = segments.split_packed(x)
            with segments.packed_rows_if_any(self.backbone, segment_ids, positions):
                return self.backbone(x, training=False)
        return self._hidden(
            [v.value for v in self.backbone.trainable_variables],
            [v.value for v in self.backbone.non_trainable_variables],
            x,
        )

    def nll(self, hidden, targets):
        if not self._jit:
            # The same call as `CausalLM.call`, so soft-capping and any
            # quantized or adapted embedding behave exactly as in the model.
            return _nll_from_logits(self.embedding(hidden, reverse=True), targets)
        return self._nll(
            [v.value for v in self.embedding.trainable_variables],
            [v.value for v in self.embedding.non_trainable_variables],
            hidden,
            targets,
        )


def _nll_from_logits(logits, targets):
    """`logsumexp(logits) - logits[target]`, in float32."""
    logits = ops.cast(logits, "float32")
    target_logits = ops.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return ops.logsumexp(logits, axis=-1) - target_logits


def _batch_nll(scorer, x, y, sample_weight, chunk_size):
    """Returns `(sum of weighted NLL, sum of weights, scored count)`."""
    flat_weight = sample_weight.reshape(-1)
    positions = np.flatnonzero(flat_weight)
    if positions.size == 0:
        return 0.0, 0.0, 0
    # Padding positions repeat position 0 with weight 0; they keep the number
    # of distinct chunk shapes small.
    padded = np.zeros(_padded_length(positions.size, chunk_size), dtype="int32")
    padded[: positions.size] = positions
    weights = np.zeros(padded.size, dtype="float64")
    weights[: positions.size] = flat_weight[positions]
    targets = y.reshape(-1).astype("int32")[padded]

    hidden = scorer.hidden(x)
    hidden = ops.reshape(hidden, (-1, ops.shape(hidden)[-1]))
    step = min(chunk_size, padded.size)
    total = 0.0
    for start in range(0, padded.size, step):
        chunk = slice(start, start + step)
        chunk_hidden = ops.take(hidden, ops.convert_to_tensor(padded[chunk]), axis=0)
        nll = scorer.nll(chunk_hidden, ops.convert_to_tensor(targets[chunk]))
        total += float(np.dot(ops.convert_to_numpy(nll).astype("float64"), weights[chunk]))
    return total, float(weights.sum()), int(positions.size)
