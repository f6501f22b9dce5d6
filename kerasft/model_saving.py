"""Whole-model saving: `model.save()` / `keras.saving.load_model` of a model with kerasft recipes.

A recipe changes a model's layers (wrappers, quantized layers, a classifier
head), but the model's own config is still the plain keras-hub one, so a
`.keras` file of it used to describe a model without those layers and
`load_model` failed ("Layer 'key' expected 1 variables, but received 2").

When a recipe is recorded on a model (`kerasft.recipes.applied.mark_applied`),
`track_applied` moves the model to a subclass of its own class
(`Gemma3CausalLM` stays `Gemma3CausalLM` for `isinstance` and
`type(model).__name__`) whose `get_config` writes:

- `base`: the model the recipes were applied to, serialised as Keras would
  (class, config, build config), so that Keras itself rebuilds it;
- `merged`: the recipes already merged into the base, in order;
- `recipes`: the live recipes, in order, each aimed at the exact layer
  paths it wrapped (as adapter files store them, `kerasft.adapters`);
- `trainable`: the paths of the trainable variables.

Every such subclass is registered under one name, `kerasft>AdaptedModel`,
whose `from_config` rebuilds the base, re-applies the merged recipes and
merges them, re-applies the live recipes, and restores the trainable flags;
Keras then loads the weights into the rebuilt layers, so the loaded model's
outputs are the saved model's exactly. Loading needs `import kerasft` (which
registers the name); without it Keras raises its usual
"Could not locate class ..." error, whose config names `kerasft`.

Named adapters (`kerasft.add_adapter`) other than the active one are kept
in memory, not in layers; `save_assets` / `load_assets` (Keras's hooks for
state that is not a variable) write and read them as adapter folders
inside the `.keras` file.
"""

import inspect
import json
import pathlib
import warnings

import keras

# The one name every adapted class is saved under.
_PACKAGE, _NAME = "kerasft", "AdaptedModel"
REGISTERED_NAME = f"{_PACKAGE}>{_NAME}"
FORMAT_VERSION = 1
# Set on a model built around another (`Classifier`): the Keras
# serialisation of the model its recipes were applied to.
_BASE_ATTRIBUTE = "_kerasft_base_model"
# Subclass of each plain class, made once per class.
_ADAPTED_CLASSES: dict[type, type] = {}


class SavesAppliedRecipes:
    """Mixed into a model's class by `track_applied`: saves and re-applies its recipes."""

    def get_config(self) -> dict:
        return saved_config(self)

    @classmethod
    def from_config(cls, config: dict) -> keras.Model:
        return model_from_config(config)

    def save_assets(self, dir_path):
        save_named_adapters(self, dir_path)

    def load_assets(self, dir_path):
        load_named_adapters(self, dir_path)


@keras.saving.register_keras_serializable(_PACKAGE, _NAME)
class AdaptedModel(SavesAppliedRecipes):
    """What `keras.saving.load_model` finds under `kerasft>AdaptedModel`: the loader.

    Never instantiated: its `from_config` returns the rebuilt model, an
    instance of the saved model's (adapted) class.
    """


def _plain_class(cls: type) -> type:
    """The class below kerasft's subclass (`cls` itself when not adapted)."""
    return getattr(cls, "_kerasft_plain_class", cls)


def adapted_class(cls: type) -> type:
    """The registered subclass of `cls` that saves its recipes (made once per class)."""
    if issubclass(cls, SavesAppliedRecipes):
        return cls
    adapted = _ADAPTED_CLASSES.get(cls)
    if adapted is None:
        adapted = type(
            cls.__name__,
            (SavesAppliedRecipes, cls),
            {"__module__": __name__, "__qualname__": cls.__qualname__,
             "_kerasft_plain_class": cls},
        )
        # Registering writes class -> name (what saving reads) and name ->
        # class; the name must keep resolving to the loader, also in a
        # process that made no adapted class yet, so it is put back.
        keras.saving.register_keras_serializable(_PACKAGE, _NAME)(adapted)
        keras.saving.register_keras_serializable(_PACKAGE, _NAME)(AdaptedModel)
        _ADAPTED_CLASSES[cls] = adapted
    return adapted


def base_model_spec(model: keras.Model) -> dict:
    """The Keras serialisation of the model `model`'s recipes were applied to.

    For a model built around another (`Classifier`), the one recorded when it
    was built; otherwise `model` itself as its plain class would save it
    (its layers' changes are not in a keras-hub config: the recipes redo them).
    """
    spec = getattr(model, _BASE_ATTRIBUTE, None)
    if spec is not None:
        return spec
    cls = _plain_class(type(model))
    spec = {
        "module": cls.__module__,
        "class_name": cls.__name__,
        "config": cls.get_config(model),
        "registered_name": keras.saving.get_registered_name(cls),
    }
    build_config = model.get_build_config()
    if build_config is not None:
        spec["build_config"] = build_config
    return spec


def track_applied(model: keras.Model, applied_on: keras.Model | None = None) -> None:
    """Makes `model.save()` write its recipe record (called by `mark_applied`).

    Args:
        model: the model a recipe was just recorded on.
        applied_on: the model it was built around, if it is a new one
            (`Classifier`); its base is what `model`'s file rebuilds.
    """
    if applied_on is not None and applied_on is not model:
        object.__setattr__(model, _BASE_ATTRIBUTE, base_model_spec(applied_on))
    cls = type(model)
    if not issubclass(cls, SavesAppliedRecipes):
        # The instance keeps its state; only its class (methods) changes.
        object.__setattr__(model, "__class__", adapted_class(cls))


def saved_config(model: keras.Model) -> dict:
    """The config `model.save()` writes for a model kerasft recipes were applied to.

    Raises:
        ValueError: if some adapters were merged into the base and others
            applied before them were not (no record describes that model).
    """
    from kerasft import __version__
    from kerasft.adapters import quantized_layers
    from kerasft.recipes.applied import split_merged_recipes, unmerged_among_merged

    merged, live = split_merged_recipes(model)
    half = unmerged_among_merged(model, merged)
    if half:
        raise ValueError(
            "Some adapters were merged into the base and others applied before them were "
            "not, so `model.save()` cannot describe this model; merge them all "
            f"(`kerasft.merge_adapters`) or save before merging. Received: unmerged {half}"
        )
    return {
        "kerasft_format_version": FORMAT_VERSION,
        "kerasft_version": __version__,
        "base": base_model_spec(model),
        "merged": [entry.describe() for entry in merged],
        "recipes": [entry.describe() for entry in live],
        "quantized_layers": quantized_layers(model),
        "trainable": [variable.path for variable in model.trainable_variables],
    }


def _file_being_loaded() -> str:
    """The path `keras.saving.load_model` was given, for error messages.

    Keras does not pass it to `from_config`; its loading functions hold it
    as `filepath` (keras 3.15 `saving_lib.load_model`, `saving_api.load_model`).
    """
    frame = inspect.currentframe()
    while frame is not None:
        if "keras/src/saving/" in frame.f_code.co_filename.replace("\\", "/"):
            path = frame.f_locals.get("filepath")
            if isinstance(path, (str, pathlib.Path)):
                return str(path)
        frame = frame.f_back
    return "the .keras file being loaded"


def _saved_recipes(descriptions: list[dict], source: str, version: str) -> list:
    """The recipes of saved descriptions, each aimed at the layer paths it wrapped.

    Raises:
        ValueError: for a recipe this kerasft does not know (the registry's
            error, which names it and the known methods) or bad arguments,
            prefixed with the file.
    """
    from kerasft.adapters import _pinned

    try:
        return [_pinned(description) for description in descriptions]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source} (saved by kerasft {version}): {error}") from error


def model_from_config(config: dict) -> keras.Model:
    """Rebuilds a model `saved_config` described: base, merged recipes, live recipes.

    The weights are not loaded here: Keras loads them into the result.

    Raises:
        ValueError: for a recipe kerasft does not know, or re-applied recipes
            that wrapped other layers than when saved, naming the file.
    """
    from kerasft.adapters import _check_target_paths
    from kerasft.recipes.applied import split_merged_recipes
    from kerasft.recipes.merging import merge_wrappers
    from kerasft.targeting import adapter_wrappers

    source = _file_being_loaded()
    version = config.get("kerasft_version", "unknown")
    merged = _saved_recipes(config.get("merged", []), source, version)
    live = _saved_recipes(config.get("recipes", []), source, version)
    model = keras.saving.deserialize_keras_object(config["base"])
    saved_quantized = config.get("quantized_layers", {})
    # Each merged recipe is applied and merged before the next is applied:
    # the same layers whether it was merged alone or with others (a later
    # recipe cannot wrap a layer an unmerged one wraps).
    for recipe in merged:
        model = recipe.apply_for_loading(model)
        # A QLoRA adapter over a quantized layer was merged either by
        # requantizing (the layer stays quantized) or into a float layer.
        requantize = any(w.target_path in saved_quantized for w in adapter_wrappers(model))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the requantize warning was given at save time
            merge_wrappers(model, requantize=requantize)
    for recipe in live:
        model = recipe.apply_for_loading(model)
    merged_entries, live_entries = split_merged_recipes(model)
    _check_target_paths(config.get("recipes", []), live_entries, source)
    # The record keeps the configs as saved (targets as the user gave them),
    # not the recipes pinned to paths, so that saving again writes the same file.
    saved = config.get("merged", []) + config.get("recipes", [])
    for entry, description in zip(merged_entries + live_entries, saved):
        entry.config = description["recipe"]
    _restore_trainable(model, config.get("trainable"), source)
    return model


def _restore_trainable(model, trainable_paths, source):
    """Sets each variable's trainable flag as saved (a user may have changed flags after apply)."""
    if trainable_paths is None:
        return
    variables = model.variables
    paths = [variable.path for variable in variables]
    missing = sorted(set(trainable_paths) - set(paths))
    if missing:
        raise ValueError(
            f"{source}: the rebuilt model has no variables at some saved trainable paths. "
            f"Received: {missing[:5]}"
        )
    if len(set(paths)) != len(paths):
        return  # paths do not name variables one for one: keep the recipes' flags
    wanted = set(trainable_paths)
    for variable in variables:
        variable.trainable = variable.path in wanted


def save_named_adapters(model: keras.Model, dir_path: str) -> None:
    """Writes `model`'s named adapters (`kerasft.add_adapter`) into the `.keras` file's assets.

    The active adapter's weights are also in the model's layers (and in the
    weights file); the others live only in memory, so each is written as an
    adapter folder (`kerasft.adapters.write_adapter_state`) with the index of
    names, as `kerasft.adapter_switch.save_adapters` does.
    """
    from kerasft import adapter_switch

    registry = getattr(model, "_kerasft_named_adapters", None)
    if registry is None or not registry.states:
        return
    adapter_switch.save_adapters(model, dir_path)


def load_named_adapters(model: keras.Model, dir_path: str) -> None:
    """Restores the named adapters `save_named_adapters` wrote, without switching any.

    Keras calls this before it loads the layers' weights, so nothing is
    applied here: the active adapter's recipes were re-applied by
    `model_from_config` and its weights load next; the names and the other
    adapters' `(config, tensors)` go back into the model's registry.
    """
    from kerasft import adapter_switch
    from kerasft.adapters import WEIGHTS_FILE, load_tensors, read_adapter_config

    directory = pathlib.Path(dir_path)
    index_path = directory / adapter_switch.NAMED_ADAPTERS_FILE
    if not index_path.is_file():
        return
    index = json.loads(index_path.read_text())
    registry = adapter_switch._registry(model)
    for name in index["adapters"]:
        config = read_adapter_config(directory / name)
        sha256 = config.pop("weights_sha256", None)
        tensors = load_tensors(directory / name / WEIGHTS_FILE, sha256=sha256)
        registry.states[name] = (config, tensors)
    registry.active = index["active"]
