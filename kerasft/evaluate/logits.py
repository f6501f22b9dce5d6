"""`model_logits`: the float32 numpy logits of a causal LM on one batch."""

from typing import Any

import keras
import numpy as np
from keras import ops

from kerasft.models import segments


def model_logits(model: keras.Model, batch: Any) -> np.ndarray:
    """Float32 numpy logits of `model` on one batch.

    Args:
        model: a keras-hub causal LM (or any model taking
            `{"token_ids", "padding_mask"}`).
        batch: a dict with `token_ids` (and optionally `padding_mask`, and
            `segment_ids` for packed rows), an `(x, y, sample_weight)` tuple
            whose `x` is such a dict, or an integer `(batch, sequence)` array
            of token ids (see
            `kerasft.quantization.calibration.calibration_inputs`).

    Returns:
        A float32 `(batch, sequence, vocabulary)` numpy array. Packed rows
        (`segment_ids`) run per document (`kerasft.models.segments`), so each
        example gets its logits alone.
    """
    # Imported here: kerasft.quantization imports kerasft.evaluate (perplexity).
    from kerasft.quantization.calibration import calibration_inputs

    x = batch[0] if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], dict) else batch
    # calibration_inputs keeps only token_ids / padding_mask, which is what
    # the model reads inside the context.
    _, segment_ids, positions = segments.split_packed(x)
    tensors = [None if v is None else ops.convert_to_tensor(v) for v in (segment_ids, positions)]
    with segments.packed_rows_if_any(model, *tensors):
        logits = model(calibration_inputs(batch))
    return np.asarray(ops.convert_to_numpy(ops.cast(logits, "float32")))
