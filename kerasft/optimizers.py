"""The optimizer and learning-rate schedule recipes compile with.

This module is also the one place that reads Keras optimizer internals
(Keras 3.15: the micro-batch counter `_iterations`, the `_learning_rate`
schedule, `_use_weight_decay`); `micro_batch_count`, `learning_rate_schedule`
and `drop_unused_weight_decay` are what other modules ask.
"""

import keras

# Substrings of variable names that get no weight decay: RMSNorm scales,
# biases and embedding tables (decaying them hurts and is not what AdamW
# papers or the reference trainers do).
NO_DECAY_NAMES = ("scale", "bias", "embeddings", "gamma", "beta")


@keras.saving.register_keras_serializable(package="kerasft")
class OptimizerStepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Evaluates `schedule` at the optimizer step under gradient accumulation.

    With `gradient_accumulation_steps=k`, Keras calls the learning-rate
    schedule with its micro-batch counter (`optimizer._iterations`), so a
    schedule sized in optimizer steps would run `k` times too fast. The
    micro-batch that applies optimizer step `j` (0-based) runs with counter
    `j * k + k - 1`, so `counter // k` is exactly `j` there.

    Args:
        schedule: a `keras.optimizers.schedules.LearningRateSchedule` whose
            step argument is the optimizer step.
        accumulation_steps: micro-batches per optimizer step.
    """

    def __init__(self, schedule, accumulation_steps):
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                "`schedule` must be a keras.optimizers.schedules.LearningRateSchedule. "
                f"Received: schedule={schedule!r}"
            )
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(
                "`accumulation_steps` must be an integer >= 1. Received: "
                f"accumulation_steps={accumulation_steps!r}"
            )
        self.schedule = schedule
        self.accumulation_steps = accumulation_steps

    def __call__(self, step):
        return self.schedule(keras.ops.floor_divide(step, self.accumulation_steps))

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "accumulation_steps": self.accumulation_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def warmup_cosine_schedule(learning_rate, total_steps, warmup_steps=None, final_fraction=0.0):
    """Linear warm-up to `learning_rate`, then cosine decay to `final_fraction` of it.

    Args:
        learning_rate: the peak learning rate.
        total_steps: optimizer steps in the whole run (after gradient
            accumulation).
        warmup_steps: steps of linear warm-up; default 5% of `total_steps`.
        final_fraction: the learning rate at the end, as a fraction of the peak.

    Returns:
        A `keras.optimizers.schedules.CosineDecay`.
    """
    if not isinstance(total_steps, int) or total_steps <= 0:
        raise ValueError(
            f"`total_steps` must be a positive integer. Received: total_steps={total_steps!r}"
        )
    if warmup_steps is None:
        warmup_steps = max(1, round(0.05 * total_steps)) if total_steps > 1 else 0
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            "`warmup_steps` must be in [0, total_steps). Received: "
            f"warmup_steps={warmup_steps!r} with total_steps={total_steps}"
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=total_steps - warmup_steps,
        alpha=final_fraction,
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def adamw(
    learning_rate=2e-4,
    total_steps=None,
    warmup_steps=None,
    weight_decay=0.01,
    gradient_accumulation_steps=1,
    clipnorm=1.0,
    **kwargs,
):
    """AdamW with decay off for norms, biases and embeddings.

    Args:
        learning_rate: peak learning rate (a float), or a
            `keras.optimizers.schedules.LearningRateSchedule`. A schedule's
            step is the optimizer step: with gradient accumulation it is
            wrapped in `OptimizerStepSchedule` (Keras itself would call it
            once per micro-batch).
        total_steps: if given, warm-up then cosine decay over this many
            optimizer steps (micro-batches / `gradient_accumulation_steps`);
            otherwise the learning rate is constant.
        warmup_steps: warm-up steps (default 5% of `total_steps`).
        weight_decay: decoupled weight decay.
        gradient_accumulation_steps: micro-batches per optimizer step.
        clipnorm: clip each gradient to this norm (`None` to disable).
        **kwargs: more `keras.optimizers.AdamW` arguments.
    """
    if not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 1:
        raise ValueError(
            "`gradient_accumulation_steps` must be an integer >= 1. Received: "
            f"gradient_accumulation_steps={gradient_accumulation_steps!r}"
        )
    if total_steps is not None and isinstance(learning_rate, (int, float)):
        learning_rate = warmup_cosine_schedule(learning_rate, total_steps, warmup_steps)
    if (
        gradient_accumulation_steps > 1
        and isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
        and not isinstance(learning_rate, OptimizerStepSchedule)
    ):
        learning_rate = OptimizerStepSchedule(learning_rate, gradient_accumulation_steps)
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        clipnorm=clipnorm,
        gradient_accumulation_steps=(
            gradient_accumulation_steps if gradient_accumulation_steps > 1 else None
        ),
        **kwargs,
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer


def drop_unused_weight_decay(optimizer, trainable_variables):
    """Turns weight decay off when every trainable variable is excluded from it.

    Keras's torch AdamW crashes on an empty list of decayed variables
    ("Tensor list must have at least one tensor"), e.g. for prompt tuning,
    whose only weights are embeddings.
    """
    if getattr(optimizer, "weight_decay", None) and not any(
        optimizer._use_weight_decay(v) for v in trainable_variables
    ):
        optimizer.weight_decay = None
    return optimizer


def innermost_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer a `LossScaleOptimizer` (or a chain of them) wraps."""
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


def micro_batch_count(optimizer: keras.optimizers.Optimizer) -> int:
    """Micro-batches the optimizer has seen (`iterations` counts optimizer steps)."""
    return int(keras.ops.convert_to_numpy(innermost_optimizer(optimizer)._iterations))


def learning_rate_schedule(optimizer: keras.optimizers.Optimizer):
    """The optimizer's learning rate as given: a schedule, a float or a variable."""
    return innermost_optimizer(optimizer)._learning_rate
