"""The `Recipe` contract: apply to a model, compile it for `fit()`, (de)serialise."""

import difflib
import inspect
import json
import pathlib
import re
import weakref

import keras

from kerasft import losses, optimizers
from kerasft.recipes import precision
from kerasft.targeting import adapter_wrappers

_REGISTRY = {}


def register_recipe(method):
    """Class decorator: makes a recipe buildable from configs by `method` name."""

    def decorator(cls):
        cls.method = method
        _REGISTRY[method] = cls
        return cls

    return decorator


def _where(source, section):
    """`" in the `recipe` section of path/to/file.yaml"`-style context for errors."""
    place = f" in the `{section}` section" if section else ""
    return place + (f" of {source}" if source else "")


def recipe_from_config(config, source=None, section=None):
    """Builds a recipe from `{"method": name, **arguments}`, strictly.

    Every key must be an argument of the method's class: an unknown key
    raises a ValueError listing the valid keys (a misspelt `ranke` would
    otherwise be a bare `TypeError`, or silently ignored by a script).
    Errors name `source` (the config file) and `section` when given.

    Args:
        config: the mapping (e.g. a config file's `recipe:` section).
        source: where it was read from, for error messages (a path).
        section: the name of the section holding it, for error messages.

    Returns:
        The recipe.

    Raises:
        ValueError: for a missing or unknown `method`, an unknown key, or an
            argument the recipe refuses (its message, plus the file).
    """
    where = _where(source, section)
    if not isinstance(config, dict):
        raise ValueError(
            f"A recipe config must be a mapping with a `method` key{where}. "
            f"Received: {type(config).__name__} {config!r}"
        )
    config = dict(config)
    method = config.pop("method", None)
    if method not in _REGISTRY:
        raise ValueError(
            f"Unknown recipe `method`{where}. Received: method={method!r}; known methods: "
            f"{sorted(_REGISTRY)}"
        )
    return _build_recipe(_REGISTRY[method], method, config, source, section)


def _build_recipe(cls, method, config, source, section):
    where = _where(source, section)
    parameters = {
        name: parameter
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name != "self"
    }
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    valid = sorted(name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)
    unknown = sorted(set(config) - set(parameters))
    if unknown and not takes_any:
        hints = {key: difflib.get_close_matches(key, valid, n=1) for key in unknown}
        hint = "; ".join(f"did you mean {h[0]!r} for {key!r}?" for key, h in hints.items() if h)
        raise ValueError(
            f"Unknown key{'s' if len(unknown) > 1 else ''} {unknown} for method {method!r}"
            f"{where}. Valid keys: {['method'] + valid}" + (f" ({hint})" if hint else "")
        )
    try:
        return cls(**config)
    except (TypeError, ValueError) as error:
        if not source:
            raise
        prefix = f"{section}." if section else ""
        nulls = [
            key for key, value in config.items()
            if value is None and key in parameters
            and parameters[key].default not in (None, inspect.Parameter.empty)
        ]
        hint = "".join(
            f" `{prefix}{key}` is empty (null); remove it to use the default "
            f"{parameters[key].default!r}." for key in nulls
        )
        raise ValueError(f"Bad {method!r} recipe{where}: {error}{hint}") from error


def _yaml_loader():
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        """YAML 1.1 plus YAML 1.2's floats: `1e-3` is a float, not the string '1e-3'."""

    ConfigLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return ConfigLoader


def parse_yaml(text, source=None):
    """Parses YAML text as config files are read (`1e-3` is a float, as in YAML 1.2 and JSON).

    Args:
        text: the YAML text (a whole file, or one `--set` value).
        source: where it came from, named in a parse error.

    Raises:
        ValueError: for text that is not valid YAML, naming `source`.
    """
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ValueError(f"Could not parse {source or 'YAML text'}: {error}") from error


def read_config_file(path):
    """Reads a YAML (`.yaml`/`.yml`) or JSON config file into a dict.

    YAML scientific notation without a dot (`1e-3`) reads as a float, as it
    does in JSON and YAML 1.2 (plain YAML 1.1 would give the string '1e-3').

    Raises:
        FileNotFoundError: if there is no file at `path`.
        ValueError: for another suffix, a parse error or a file that does not
            hold a mapping, naming the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No config file at `path`. Received: path={str(path)!r}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        config = parse_yaml(text, source=f"config file {str(path)!r}")
    elif path.suffix == ".json":
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"Could not parse config file {str(path)!r}: {error}") from error
    else:
        raise ValueError(
            "Config files must end in .yaml, .yml or .json. "
            f"Received: path={str(path)!r}"
        )
    if not isinstance(config, dict):
        raise ValueError(
            f"A config file must hold a mapping. Received: {type(config).__name__} in {path}"
        )
    return config


def recipe_from_file(path):
    """Builds a recipe from a config file's `recipe:` section (or the whole file)."""
    config = read_config_file(path)
    if "recipe" in config:
        return recipe_from_config(config["recipe"], source=str(path), section="recipe")
    return recipe_from_config(config, source=str(path), section=None)


def freeze_all(model):
    """Makes every variable of `model` non-trainable, leaving layers' flags on.

    Layers stay `trainable=True` so that adapters added under them later are
    still collected into `model.trainable_variables`.
    """
    model.trainable = True
    for variable in model.variables:
        variable.trainable = False


class AppliedRecipe:
    """One recipe applied to a model: its config, the wrappers it put in, what it trained.

    Attributes:
        config: the recipe's `get_config()` when it was applied.
        target_paths: the paths of the layers it wrapped, in model order.
        trained_paths: the paths of the variables trainable right after it
            was applied (a later recipe may freeze them; they are still its
            result and are saved with it).
    """

    def __init__(self, recipe, config, wrappers, trained_paths):
        self.recipe = recipe
        self.config = config
        self.target_paths = [wrapper.target_path for wrapper in wrappers]
        self.trained_paths = list(trained_paths)
        # Weak: a merged wrapper is dropped by the model and need not be kept.
        self._wrappers = [weakref.ref(wrapper) for wrapper in wrappers]

    def wrappers(self) -> list:
        """The wrappers this recipe put in that still exist (merged ones may not)."""
        return [w for w in (ref() for ref in self._wrappers) if w is not None]

    def describe(self) -> dict:
        """`{"recipe": config, "target_paths": [...]}`, as adapter files store it."""
        return {"recipe": self.config, "target_paths": list(self.target_paths)}

    def __repr__(self):
        return f"{self.config.get('method')} at paths {self.target_paths}"


def mark_applied(
    model: keras.Model,
    recipe: "Recipe",
    applied_on: keras.Model | None = None,
    replacing: list | None = None,
) -> None:
    """Records `recipe` on `model`, on top of the recipes applied before it.

    The record (see `applied_recipes`) is what `save_adapter` writes and
    `load_adapter` re-applies in order. The new entry claims every adapter
    wrapper in `model` that no earlier entry claims.

    Args:
        model: the model `recipe.apply` returns.
        recipe: the recipe just applied.
        applied_on: for a recipe that builds a new model around the one it
            was given (`Classifier`), that given model: its record carries
            over, less the entries of recipes `recipe` holds (its `base`,
            which it re-applies itself).
        replacing: wrappers claimed by an earlier entry that `recipe` now
            describes instead (folding a prefix provider into the layers);
            that entry is replaced in place.
    """
    source = model if applied_on is None else applied_on
    entries = list(applied_recipes(source))
    if applied_on is not None:
        held = [value for value in vars(recipe).values() if isinstance(value, Recipe)]
        entries = [entry for entry in entries if not any(entry.recipe is r for r in held)]
    claimed = {id(wrapper) for entry in entries for wrapper in entry.wrappers()}
    new = [wrapper for wrapper in adapter_wrappers(model) if id(wrapper) not in claimed]
    trained = [variable.path for variable in model.trainable_variables]
    replaced = {id(wrapper) for wrapper in replacing or ()}
    index = next(
        (i for i, entry in enumerate(entries)
         if any(id(wrapper) in replaced for wrapper in entry.wrappers())),
        None,
    )
    if index is None:
        entries.append(AppliedRecipe(recipe, recipe.get_config(), new, trained))
    else:
        wrappers = entries[index].wrappers() + new
        entries[index] = AppliedRecipe(recipe, recipe.get_config(), wrappers, trained)
        new = wrappers
    for wrapper in new:
        wrapper.applied_by = recipe.method
    # object.__setattr__ keeps this plain list out of Keras's state tracking.
    object.__setattr__(model, "_kerasft_recipes", entries)


def applied_recipes(model: keras.Model) -> list[AppliedRecipe]:
    """The `AppliedRecipe` entries of `model`, oldest first (merged ones included)."""
    return list(getattr(model, "_kerasft_recipes", ()))


def restore_applied_recipes(model: keras.Model, entries: list[AppliedRecipe]) -> None:
    """Sets `model`'s record back to `entries` (from `applied_recipes`), e.g. after a failed load."""
    object.__setattr__(model, "_kerasft_recipes", list(entries))


def split_merged_recipes(model: keras.Model) -> tuple[list[AppliedRecipe], list[AppliedRecipe]]:
    """`(merged, live)`: the applied recipes now part of the base, and those after them.

    A recipe is merged when some wrapper it put in is gone from the model
    (`Recipe.merge`, `kerasft.merge_adapters` fold wrappers into the base). Everything applied up to the last merged recipe is then part of
    the base; what follows is live and is what `save_adapter` saves.
    """
    entries = applied_recipes(model)
    present = {id(wrapper) for wrapper in adapter_wrappers(model)}
    last = -1
    for index, entry in enumerate(entries):
        alive = [w for w in entry.wrappers() if id(w) in present]
        if len(alive) < len(entry.target_paths):
            last = index
    return entries[: last + 1], entries[last + 1 :]


def applied_recipe_config(model):
    """The config of the last recipe applied to `model`, or None."""
    entries = applied_recipes(model)
    return entries[-1].config if entries else None


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
        section = "recipe" if "recipe" in config else None
        config = dict(config.get("recipe", config))
        method = config.get("method", cls.method)
        if method != cls.method:
            raise ValueError(
                f"{cls.__name__} cannot be built from a config for another method"
                f"{_where(path, section)}. Received: method={method!r}"
            )
        config.pop("method", None)
        return _build_recipe(cls, method, config, str(path), section)

    def __repr__(self):
        arguments = ", ".join(
            f"{k}={v!r}" for k, v in self.get_config().items() if k != "method"
        )
        return f"{type(self).__name__}({arguments})"

