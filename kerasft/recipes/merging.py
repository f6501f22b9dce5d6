"""The one post-training verb: replace every adapter wrapper by its merged layer, and report.

`Recipe.merge(model, batch=None, **options)` and `kerasft.merge_adapters`
both come here. Each wrapper builds its own replacement
(`AdapterWrapper.merged_layer`), so no method is named in this module.
"""

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from kerasft.targeting import adapter_wrappers, refresh_after_surgery, replace_layer


def measured_merge(
    model: keras.Model, batch: Any, merge: Callable[[], list[str]]
) -> dict[str, Any]:
    """Runs `merge()` (which returns the merged paths) and reports the logit change.

    Args:
        model: the model `merge` changes in place.
        batch: None, or inputs (`{"token_ids", "padding_mask"}`, an
            `(x, y, sample_weight)` tuple, or token ids) on which the max
            absolute logit difference before/after is measured.
        merge: does the merge and returns the layer paths it merged.

    Returns:
        `{"merged": [paths], "max_abs_logit_difference": float | None}`.
    """
    from kerasft.evaluate.logits import model_logits

    before = None if batch is None else model_logits(model, batch)
    merged = list(merge())
    difference = None
    if batch is not None:
        difference = float(np.max(np.abs(model_logits(model, batch) - before)))
    return {"merged": merged, "max_abs_logit_difference": difference}


def merge_wrappers(model: keras.Model, batch: Any = None, **options: Any) -> dict[str, Any]:
    """Replaces every adapter wrapper in `model` by its `merged_layer(**options)`, in place.

    Nothing changes if any wrapper is not mergeable. Merging again is a
    no-op (no wrapper is left). The model keeps the record of what was
    merged into it (`kerasft.recipes.base.split_merged_recipes`).

    Args:
        model: a model with adapter wrappers (or none).
        batch: optional inputs on which the logit change is measured.
        **options: passed to every wrapper's `merged_layer` (e.g. QLoRA's
            `requantize`).

    Returns:
        `{"merged": [layer paths], "max_abs_logit_difference": float | None}`.

    Raises:
        ValueError: if the model holds an adapter that cannot be merged.
    """
    wrappers = adapter_wrappers(model)
    unmergeable = [w.target_path for w in wrappers if not w.mergeable]
    if unmergeable:
        raise ValueError(
            "Some adapters cannot be merged into their layers. Received: "
            f"unmergeable adapters at {unmergeable}"
        )

    def merge():
        merged = []
        for wrapper in wrappers:
            replace_layer(model, wrapper, wrapper.merged_layer(**options))
            merged.append(wrapper.target_path)
        if merged:
            refresh_after_surgery(model)
        return merged

    return measured_merge(model, batch, merge)
