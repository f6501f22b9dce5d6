"""The `Recipe` contract: apply to a model, compile it for `fit()`, (de)serialise."""

import json
import pathlib

import keras

from kerasft import losses, optimizers
from kerasft.recipes import precision

_REGISTRY = {}


def register_recipe(method):
    """Class decorator: makes a recipe buildable from configs by `method` name."""

    def decorator(cls):
        cls.method = method
        _REGISTRY[method] = cls
        return cls

    return decorator


def recipe_from_config(config):
    """Builds a recipe from `{"method": name, **arguments}`."""
    config = dict(config)
    method = config.pop("method", None)
    if method not in _REGISTRY:
        raise ValueError(
            f"Unknown recipe `method`. Received: method={method!r}; known methods: "
            f"{sorted(_REGISTRY)}"
        )
    return _REGISTRY[method](**config)


def read_config_file(path):
    """Reads a YAML (`.yaml`/`.yml`) or JSON config file into a dict."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No config file at `path`. Received: path={str(path)!r}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        config = yaml.safe_load(text)
    elif path.suffix == ".json":
        config = json.loads(text)
    else:
        raise ValueError(
            "Config files must end in .yaml, .yml or .json. "
            f"Received: path={str(path)!r}"
        )
    if not isinstance(config, dict):
        raise ValueError(f"A config file must hold a mapping. Received: {type(config).__name__} in {path}")
    return config


def recipe_from_file(path):
    """Builds a recipe from a config file's `recipe:` section (or the whole file)."""
    config = read_config_file(path)
    return recipe_from_config(config.get("recipe", config))


def freeze_all(model):
    """Makes every variable of `model` non-trainable, leaving layers' flags on.

    Layers stay `trainable=True` so that adapters added under them later are
    still collected into `model.trainable_variables`.
    """
    model.trainable = True
    for variable in model.variables:
        variable.trainable = False


def mark_applied(model, recipe):
    """Records the recipe on the model so `save_adapter` knows what was done."""
    # object.__setattr__ keeps this plain dict out of Keras's state tracking.
    object.__setattr__(model, "_kerasft_recipe_config", recipe.get_config())


def applied_recipe_config(model):
    """The config of the last recipe applied to `model`, or None."""
    return getattr(model, "_kerasft_recipe_config", None)


class Recipe:
    """A fine-tuning method: what to change in a model and how to train it.

    Subclasses implement `apply(model)`; `compile` is shared and sets AdamW
    (no decay on norms, biases, embeddings), warm-up + cosine schedule,
    gradient accumulation and clipping, the causal-LM loss weighted by the
    sample weights, and weighted next-token accuracy.
    """

    method = None

    def apply(self, model):
        """Changes `model` in place for this method and returns it."""
        raise NotImplementedError

    def apply_for_loading(self, model):
        """`apply` for a base whose trained weights are loaded next (`load_adapter`).

        Recipes whose start is costly or needs data (e.g. `QLoRA` with
        `init="residual"`) skip it here: the loaded weights replace it.
        """
        return self.apply(model)

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
        # Without accumulation: mean over the batch's trained tokens. With it,
        # the token count of the whole step comes from TokenNormalizedBatches.
        overrides.setdefault(
            "loss", losses.causal_lm_loss(token_mean=gradient_accumulation_steps == 1)
        )
        optimizer = optimizers.drop_unused_weight_decay(optimizer, model.trainable_variables)
        optimizer = precision.loss_scale_optimizer(model, optimizer, loss_scale)
        overrides.setdefault("weighted_metrics", losses.causal_lm_metrics())
        model.compile(optimizer=optimizer, **overrides)
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
        config = dict(config.get("recipe", config))
        method = config.get("method", cls.method)
        if method != cls.method:
            raise ValueError(
                f"{cls.__name__} cannot be built from a config for another method. "
                f"Received: method={method!r}"
            )
        return cls.from_config(config)

    def __repr__(self):
        arguments = ", ".join(
            f"{k}={v!r}" for k, v in self.get_config().items() if k != "method"
        )
        return f"{type(self).__name__}({arguments})"


def count_params(variables):
    """Total number of scalars in a list of variables."""
    return int(sum(keras.ops.size(v) for v in variables))
