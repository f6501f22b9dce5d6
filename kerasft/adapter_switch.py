"""Running a model with its adapters switched off: the frozen base, no second copy.

DPO's and GRPO's reference policy, the forgetting check's base model and a
user's "what did the base say?" all need the model as it was before
training. Every adapter method in kerasft is an `AdapterWrapper` (LoRA,
DoRA, QLoRA, IA3, bottleneck adapters, prefixes and soft prompts, QAT), so
switching each wrapper to call its wrapped layer alone gives exactly the
base model from the same weights.
"""

import contextlib
from collections.abc import Iterator

import keras

from kerasft.targeting import adapter_wrappers

# Keras (3.15, `keras/src/trainers/trainer.py`) and keras-hub's CausalLM
# (0.32, `causal_lm.py`) cache their traced functions here; a trace made
# with the adapters on would keep them on.
_COMPILED_FUNCTIONS = ("train_function", "test_function", "predict_function", "generate_function")


def reset_compiled_functions(model: keras.Model) -> None:
    """Drops `model`'s cached traced functions so that the next call traces anew."""
    for name in _COMPILED_FUNCTIONS:
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


@contextlib.contextmanager
def adapters_disabled(model: keras.Model, reset_compiled: bool = True) -> Iterator[keras.Model]:
    """Inside the block `model` runs as its frozen base: every adapter is off.

    Outputs inside equal those of the model before any adapter recipe was
    applied; nothing is copied and no weight changes. The adapters come back
    on when the block ends, also on error.

    Args:
        model: a model with adapters (a model without any is returned as is).
        reset_compiled: drop the model's cached `predict` / `fit` /
            `generate` traces on entry and exit, so that calls inside and
            after the block see the switch. Pass False when switching inside
            a traced function (a custom `train_step` computing reference
            log-probabilities), where the trace must stay.

    Raises:
        ValueError: if an adapter is merged into its layer (its update then
            lives in the base weights and cannot be switched off).
    """
    wrappers = adapter_wrappers(model)
    merged = [w.target_path for w in wrappers if getattr(w, "merged", False)]
    if merged:
        raise ValueError(
            "Adapters merged into their layers cannot be switched off; unmerge them "
            f"first. Received: merged adapters at {merged[:3]}"
            + (f" and {len(merged) - 3} more" if len(merged) > 3 else "")
        )
    previous = [w.adapter_enabled for w in wrappers]
    for wrapper in wrappers:
        wrapper.adapter_enabled = False
    if reset_compiled:
        reset_compiled_functions(model)
    try:
        yield model
    finally:
        for wrapper, enabled in zip(wrappers, previous):
            wrapper.adapter_enabled = enabled
        if reset_compiled:
            reset_compiled_functions(model)
