"""`model_logits`: the float32 numpy logits of a causal LM on one batch."""

from typing import Any

import keras
import numpy as np
from keras import ops


def model_logits(model: keras.Model, batch: Any) -> np.ndarray:
    """Float32 numpy logits of `model` on one batch.

    Args:
        model: a keras-hub causal LM (or any model taking
            `{"token_ids", "padding_mask"}`).
        batch: a dict with `token_ids` (and optionally `padding_mask`), an
            `(x, y, sample_weight)` tuple whose `x` is such a dict, or an
            integer `(batch, sequence)` array of token ids (see
            `kerasft.quantization.calibration.calibration_inputs`).

    Returns:
        A float32 `(batch, sequence, vocabulary)` numpy array.
    """
    # Imported here: kerasft.quantization imports kerasft.evaluate (perplexity).
    from kerasft.quantization.calibration import calibration_inputs

    return np.asarray(ops.convert_to_numpy(ops.cast(model(calibration_inputs(batch)), "float32")))
