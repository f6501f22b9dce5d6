"""The `Recipe` contract: apply to a model, compile it for `fit()`, (de)serialise.

The registry and config files live in `kerasft.recipes.registry`, the record
of applied recipes in `kerasft.recipes.applied`; their names are re-exported
here, where recipes have always imported them from.
"""

import keras

from kerasft import losses, optimizers, training_forward
from kerasft.recipes import precision
from kerasft.recipes.applied import (  # noqa: F401  (re-exported)
    AppliedRecipe,
    applied_recipe_config,
    applied_recipes,
    freeze_all,
    mark_applied,
    restore_applied_recipes,
    split_merged_recipes,
)
from kerasft.recipes.registry import (  # noqa: F401  (re-exported)
    build_recipe,
    config_location,
    parse_yaml,
    read_config_file,
    recipe_from_config,
    recipe_from_file,
    register_recipe,
)


class Recipe:
    """A fine-tuning method: what to change in a model and how to train it.

    Subclasses implement `apply(model)`; `compile` is shared and sets AdamW
    (no decay on norms, biases, embeddings), warm-up + cosine schedule,
    gradient accumulation and clipping, the causal-LM loss weighted by the
    sample weights, and weighted next-token accuracy.
    """

    method = None
    # The keyword options `merge` takes besides `batch` (e.g. QLoRA's `requantize`).
    merge_options: tuple[str, ...] = ()

    def apply(self, model):
        """Changes `model` in place for this method and returns it."""
        raise NotImplementedError

    def apply_for_loading(self, model):
        """`apply` for a base whose trained weights are loaded next (`load_adapter`).

        Recipes whose start is costly or needs data (e.g. `QLoRA` with
        `init="residual"`) skip it here: the loaded weights replace it.
        """
        return self.apply(model)

    def merge(self, model: keras.Model, batch=None, **options) -> dict:
        """Finishes training: replaces every adapter in `model` by its merged layer, in place.

        Each adapter wrapper builds its own replacement
        (`AdapterWrapper.merged_layer`): LoRA, DoRA and IA3 fold into the
        kernel, QAT becomes the quantized layer, QLoRA a float (or with
        `requantize=True` a requantized) layer. Recipes without wrappers to
        merge report nothing merged; prefix and prompt recipes fold their
        encoder into plain weights instead. Merging twice is a no-op.

        Args:
            model: the model `apply` returned (and trained), or one
                `kerasft.load_adapter` returned.
            batch: optional inputs (`{"token_ids", "padding_mask"}` or an
                `(x, y, sample_weight)` tuple) on which the max absolute
                logit difference between before and after is measured.
            **options: this recipe's `merge_options`.

        Returns:
            `{"merged": [layer paths], "max_abs_logit_difference": float | None}`.

        Raises:
            ValueError: for an option this recipe does not take, or an adapter
                that cannot be merged (nothing changes then).
        """
        from kerasft.recipes.merging import merge_wrappers

        self.check_merge_options(options)
        return merge_wrappers(model, batch, **options)

    def check_merge_options(self, options: dict) -> None:
        """Raises a ValueError naming every key of `options` not in `merge_options`."""
        unknown = sorted(set(options) - set(self.merge_options))
        if unknown:
            raise ValueError(
                f"{type(self).__name__}.merge takes the options {list(self.merge_options)} "
                f"besides `batch`. Received: {', '.join(f'{k}={options[k]!r}' for k in unknown)}"
            )

    def with_target_paths(self, target_paths: list[str]) -> "Recipe":
        """This recipe aimed at exactly `target_paths`, the layers it wrapped when saved.

        `load_adapter` re-applies a saved recipe through this hook so that
        each adapter lands on the very layers it was trained on, even if its
        targets were patterns. Recipes that take `targets` get them replaced
        by the paths; a recipe holding a `base` recipe (`Classifier`) pins
        that one; others (whose layers follow from their other arguments)
        are returned unchanged. Override it where that is not right.

        Args:
            target_paths: layer paths, as `AppliedRecipe.target_paths`.

        Returns:
            A recipe (`self` when nothing is pinned).
        """
        config = self.get_config()
        if isinstance(config.get("base"), dict):
            base = recipe_from_config(config["base"]).with_target_paths(target_paths)
            config["base"] = base.get_config()
        elif "targets" in config and target_paths:
            config["targets"] = list(target_paths)
        else:
            return self
        return recipe_from_config(config)

    def compile(
        self,
        model,
        learning_rate=2e-4,
        total_steps=None,
        warmup_steps=None,
        weight_decay=0.01,
        gradient_accumulation_steps=1,
        clipnorm=1.0,
        loss_scale="auto",
        logits_chunk_size=128,
        activation_checkpointing=None,
        **overrides,
    ):
        """Compiles `model` for a plain `model.fit()`.

        Args:
            model: the model `apply` returned.
            learning_rate: peak learning rate.
            total_steps: optimizer steps of the run (micro-batches divided by
                `gradient_accumulation_steps`); enables warm-up + cosine. The
                schedule advances once per optimizer step, not per micro-batch.
            warmup_steps: warm-up optimizer steps (default 5% of `total_steps`).
            weight_decay: AdamW's decoupled weight decay.
            gradient_accumulation_steps: micro-batches per optimizer step. With
                more than one, feed batches through
                `kerasft.losses.TokenNormalizedBatches` (with
                `keras.Model.fit`), which scales the sample weights so that the
                loss is the mean over the trained tokens of the whole step.
            clipnorm: per-gradient norm clipping (`None` disables it).
            loss_scale: `"auto"` wraps the optimizer in a
                `keras.optimizers.LossScaleOptimizer` when any layer computes
                in float16 (Keras itself looks only at the outer model's
                policy); True always, False never.
            logits_chunk_size: with the default loss and metrics on a
                keras-hub causal LM, `fit` computes logits only at the
                positions with nonzero sample weight, this many at a time
                (`kerasft.training_forward`; `predict`, `evaluate` and
                `generate` keep full logits). `None` computes full logits
                in training too. A `loss`, `metrics` or `weighted_metrics`
                override also does (its functions may need every logit).
            activation_checkpointing: True rematerialises every decoder
                block in the backward pass (memory of one block's
                activations, one more forward pass of the blocks), False
                stops it, None leaves the model as it is.
            **overrides: passed to `model.compile` (`optimizer`, `loss`,
                `weighted_metrics`, `sampler`, `jit_compile`, ...), replacing
                the defaults.

        Returns:
            The compiled model.
        """
        optimizer = overrides.pop("optimizer", None) or optimizers.adamw(
            learning_rate=learning_rate,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            gradient_accumulation_steps=gradient_accumulation_steps,
            clipnorm=clipnorm,
        )
        default_loss = not {"loss", "metrics", "weighted_metrics"} & set(overrides)
        token_mean = gradient_accumulation_steps == 1
        # Without accumulation: mean over the batch's trained tokens. With it,
        # the token count of the whole step comes from TokenNormalizedBatches.
        overrides.setdefault("loss", losses.causal_lm_loss(token_mean=token_mean))
        optimizer = optimizers.drop_unused_weight_decay(optimizer, model.trainable_variables)
        optimizer = precision.loss_scale_optimizer(model, optimizer, loss_scale)
        overrides.setdefault("weighted_metrics", losses.causal_lm_metrics())
        if activation_checkpointing is not None:
            from kerasft.models import architecture

            architecture.set_activation_checkpointing(model, bool(activation_checkpointing))
        model.compile(optimizer=optimizer, **overrides)
        if default_loss and logits_chunk_size is not None and training_forward.is_causal_lm(model):
            training_forward.install(model, token_mean=token_mean, chunk_size=logits_chunk_size)
        else:
            training_forward.uninstall(model)
        return model

    def get_config(self):
        """The recipe's arguments plus `method`; `recipe_from_config` inverts it."""
        return {"method": self.method}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("method", None)
        return cls(**config)

    @classmethod
    def from_file(cls, path):
        """Builds this recipe from a YAML or JSON config file."""
        config = read_config_file(path)
        section = "recipe" if "recipe" in config else None
        config = dict(config.get("recipe", config))
        method = config.get("method", cls.method)
        if method != cls.method:
            raise ValueError(
                f"{cls.__name__} cannot be built from a config for another method"
                f"{config_location(path, section)}. Received: method={method!r}"
            )
        config.pop("method", None)
        return build_recipe(cls, method, config, str(path), section)

    def __repr__(self):
        arguments = ", ".join(
            f"{k}={v!r}" for k, v in self.get_config().items() if k != "method"
        )
        return f"{type(self).__name__}({arguments})"

