"""Adapter files: save what the applied recipes trained, load it onto a fresh base, merge it.

An adapter directory holds two files:
- `adapter.safetensors`: the trained tensors, keyed by layer path
  (`decoder_block_3/attention/query/lora_a`), never by position;
- `kerasft_adapter.json`: the applied recipes in order (`recipes`: each
  config, with the exact paths of the layers it wrapped), the recipes
  already merged into the base it was trained on (`base_merged`), the
  SHA-256 of each saved tensor, the quantized layers of the adapted model,
  the dtype, the kerasft version, and the base model's class, config and a
  fingerprint of that config. `method`, `recipe`, `target_paths` and
  `ranks` describe the last recipe, as single-recipe files did.

Recipes compose: each recipe applied to a model is recorded with the layers
it wrapped (`kerasft.recipes.base.applied_recipes`); a later recipe freezes
what the earlier ones trained and must not target layers they wrapped. Saving
writes every recipe's weights and config; loading re-applies each in order,
aimed at its own layers, so each adapter keeps its own settings.

The config file was named `adapter_config.json` before; that is PEFT's name
(PEFT cannot read kerasft's contents), so it is now `kerasft_adapter.json`
and old folders are still read. `kerasft.export.peft` writes and reads
PEFT's own format. `adapter_state` / `apply_adapter_state` are the same
save and load without files (named adapters keep adapters in memory).
"""

import hashlib
import json
import os
import pathlib

import keras
import numpy as np

from kerasft.quantization.quantized_dense import QuantizedEinsumDense
from kerasft.quantization.quantized_embedding import QuantizedEmbedding
from kerasft.recipes.base import (
    applied_recipes,
    recipe_from_config,
    restore_applied_recipes,
    split_merged_recipes,
)
from kerasft.recipes.applied import unmerged_among_merged
from kerasft.recipes.merging import merge_wrappers
from kerasft.targeting import adapter_wrappers, iter_layers, undo_surgery_on_error
from kerasft.tensor_files import atomic_write, load_tensors, save_tensors  # noqa: F401 (re-exported)

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "kerasft_adapter.json"
# The name folders written before had: PEFT's, with contents PEFT cannot read.
LEGACY_CONFIG_FILE = "adapter_config.json"
FORMAT_VERSION = 2
# Settings that do not change which weights fit where.
_FINGERPRINT_IGNORED_KEYS = ("name", "trainable", "dtype")


def _backbone(model):
    return getattr(model, "backbone", model)


def base_model_config(model: keras.Model) -> dict:
    """The backbone config that decides whether an adapter fits, as plain JSON."""
    config = _backbone(model).get_config()
    config = {k: v for k, v in config.items() if k not in _FINGERPRINT_IGNORED_KEYS}
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def base_model_fingerprint(model: keras.Model) -> str:
    """A SHA-256 of `base_model_config(model)`."""
    canonical = json.dumps(base_model_config(model), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def quantized_layers(model: keras.Model) -> dict[str, str]:
    """`{layer path: "Class(mode)"}` of every weight-quantized layer in `model`.

    An adapter trained over float layers gives other outputs over quantized
    ones (and the other way round), so adapter files record this.
    """
    found = {}
    for layer in iter_layers(model):
        mode = getattr(layer, "quantization_mode", None)  # Keras's own quantized layers
        if isinstance(layer, QuantizedEinsumDense):
            mode = layer.mode
        elif isinstance(layer, QuantizedEmbedding):
            mode = "int8"
        if mode is not None and layer.path:
            found[layer.path] = f"{type(layer).__name__}({mode})"
    return found


def _trained_tensors(model, entries=None):
    """`{key: variable}` of what the live recipes added, trained or fitted.

    Every adapter wrapper's own weights (each wrapper says which and under
    which key, `AdapterWrapper.adapter_weights`), then every other variable
    one of `entries` trained or that is trainable now (a Freeze block, a
    classifier head, a soft prompt), keyed by its path.
    """
    if entries is None:
        entries = split_merged_recipes(model)[1]
    tensors = {}
    for wrapper in adapter_wrappers(model):
        tensors.update(wrapper.adapter_weights())
    in_wrappers = {id(v) for v in tensors.values()}
    trained = {path for entry in entries for path in entry.trained_paths}
    trainable = {id(v) for v in model.trainable_variables}
    for variable in model.variables:
        if id(variable) in in_wrappers:
            continue
        if id(variable) in trainable or variable.path in trained:
            tensors[variable.path] = variable
    return tensors


def _describe(entries):
    return [entry.describe() for entry in entries]


def adapter_state(model: keras.Model, directory: str | os.PathLike | None = None
                  ) -> tuple[dict, dict[str, np.ndarray]]:
    """`(config, tensors)` that `save_adapter` writes, without writing them.

    Args:
        model: a model kerasft recipes were applied to.
        directory: only named in error messages.

    Returns:
        The adapter config (the contents of `kerasft_adapter.json`, less the
        weights' SHA-256) and `{key: array}` of the trained tensors (copies).

    Raises:
        ValueError: as `save_adapter`.
    """
    from kerasft import __version__

    entries = applied_recipes(model)
    if not entries:
        raise ValueError(
            "`model` has no kerasft recipe applied, so there is no adapter to "
            f"save. Received: model={model.name!r}"
        )
    merged, live = split_merged_recipes(model)
    half = unmerged_among_merged(model, merged)
    if half:
        raise ValueError(
            "Some adapters were merged into the base and others applied before them "
            "were not, so no adapter file can describe this model; merge them all "
            f"(`kerasft.merge_adapters`) or save before merging. Received: unmerged {half} "
            f"among merged {[e for e in merged if e not in half]}"
        )
    if not live:
        raise ValueError(
            "The adapter was merged into the base at paths "
            f"{[p for e in merged for p in e.target_paths]} ({merged}), so nothing is "
            "left to save; save the adapter before merging. Nothing was written. "
            f"Received: directory={str(directory)!r}"
        )
    variables = _trained_tensors(model, live)
    wrappers = [w for entry in live for w in entry.wrappers()]
    config = {
        "format_version": FORMAT_VERSION,
        "method": live[-1].config["method"],
        "recipe": live[-1].config,
        "recipes": _describe(live),
        "base_merged": _describe(merged),
        "target_paths": [w.target_path for w in wrappers],
        "ranks": {w.target_path: w.rank for w in wrappers if hasattr(w, "rank")},
        "quantized_layers": quantized_layers(model),
        "dtype": str(next(iter(variables.values())).dtype) if variables else None,
        "kerasft_version": __version__,
        "base_model_class": type(model).__name__,
        "base_model_fingerprint": base_model_fingerprint(model),
        "base_model_config": base_model_config(model),
    }
    tensors = {key: np.array(keras.ops.convert_to_numpy(v)) for key, v in variables.items()}
    return config, tensors


def save_adapter(model: keras.Model, directory: str | os.PathLike) -> pathlib.Path:
    """Saves the weights and configs of every recipe applied to `model`.

    Args:
        model: a model kerasft recipes were applied to (one or several, in
            order; see the module docstring).
        directory: created if missing; existing adapter files are replaced
            atomically.

    Returns:
        The path of the directory.

    Raises:
        ValueError: if no recipe was applied, or if what was applied was
            merged into the base since (nothing is left to save: save before
            merging); nothing is written then.
    """
    config, tensors = adapter_state(model, directory)
    write_adapter_state(config, tensors, directory)
    return pathlib.Path(directory)


def write_adapter_state(config: dict, tensors: dict, directory: str | os.PathLike) -> None:
    """Writes an `adapter_state` as an adapter directory (`save_adapter`'s files)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    config["weights_sha256"] = save_tensors(
        tensors, directory / WEIGHTS_FILE, metadata={"format": "kerasft"}
    )
    text = json.dumps(config, indent=2, sort_keys=True)
    atomic_write(directory / CONFIG_FILE, lambda tmp: pathlib.Path(tmp).write_text(text))
    # A config left under the old (PEFT's) name would describe other weights.
    legacy = directory / LEGACY_CONFIG_FILE
    if legacy.is_file() and _is_kerasft_config(legacy):
        legacy.unlink()


def _is_kerasft_config(path):
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and "recipe" in config


def adapter_config_path(directory: str | os.PathLike) -> pathlib.Path:
    """The kerasft config file of an adapter directory (`kerasft_adapter.json`,
    or `adapter_config.json` in folders written before the rename).

    Raises:
        FileNotFoundError: if the directory has neither; naming a PEFT
            adapter (`kerasft.export.peft.load_peft_adapter` reads those).
    """
    directory = pathlib.Path(directory)
    path = directory / CONFIG_FILE
    if path.is_file():
        return path
    legacy = directory / LEGACY_CONFIG_FILE
    if legacy.is_file():
        if _is_kerasft_config(legacy) or not (directory / "adapter_model.safetensors").is_file():
            return legacy
        raise FileNotFoundError(
            f"{directory} holds a PEFT adapter ({LEGACY_CONFIG_FILE} + adapter_model.safetensors), "
            "not a kerasft one; load it with `kerasft.export.peft.load_peft_adapter`. "
            f"Received: directory={str(directory)!r}"
        )
    raise FileNotFoundError(
        f"No {CONFIG_FILE} in the adapter directory. Received: directory={str(directory)!r}"
    )


def read_adapter_config(directory: str | os.PathLike) -> dict:
    """Reads the kerasft config (`kerasft_adapter.json`) of an adapter directory.

    Raises:
        FileNotFoundError: if the directory has none.
        ValueError: if it is not a JSON object, naming the file.
    """
    path = adapter_config_path(directory)
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot parse {path} as JSON. Received: {error}") from error
    if not isinstance(config, dict) or "recipe" not in config:
        raise ValueError(
            f"{path} is not an adapter config (a JSON object with a `recipe`). "
            f"Received: {type(config).__name__} with keys {sorted(config) if isinstance(config, dict) else None}"
        )
    return config


def saved_recipes(config: dict) -> list[dict]:
    """The `[{"recipe", "target_paths"}]` of an adapter config, oldest first.

    Files written before recipes composed hold one recipe, at `recipe` and
    `target_paths`.
    """
    if "recipes" in config:
        return config["recipes"]
    return [{"recipe": config["recipe"], "target_paths": config.get("target_paths") or []}]


def check_base_model(model: keras.Model, config: dict) -> None:
    """Raises a ValueError naming every config key where `model` differs."""
    if config["base_model_fingerprint"] == base_model_fingerprint(model):
        return
    saved = config["base_model_config"]
    current = base_model_config(model)
    differences = [
        f"{key}: adapter base has {saved.get(key)!r}, this model has {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    raise ValueError(
        "The adapter was trained on a different base model. Received: `model` "
        f"with {'; '.join(differences) or 'a different config'}"
    )


def _pinned(description):
    """The recipe of a `{"recipe", "target_paths"}` description, aimed at its paths."""
    recipe = recipe_from_config(description["recipe"])
    return recipe.with_target_paths(description.get("target_paths") or [])


def _comparable(descriptions):
    return [
        (_pinned(d).get_config(), list(d.get("target_paths") or [])) for d in descriptions
    ]


def _check_model_state(model, config, directory):
    """Refuses a model with live recipes or a merged base other than the adapter's."""
    merged, live = split_merged_recipes(model)
    claimed = {id(w) for entry in live for w in entry.wrappers()}
    stray = [w.target_path for w in adapter_wrappers(model) if id(w) not in claimed]
    if live or stray:
        raise ValueError(
            "`model` already has kerasft recipes or adapters applied "
            f"({live or ''}{' adapters at ' + str(stray) if stray else ''}); "
            "`load_adapter` applies the adapter's own recipes to the base model as it "
            f"was before `apply`. Load it onto a fresh base. Received: directory={str(directory)!r}"
        )
    saved_merged = config.get("base_merged", [])
    if _comparable(_describe(merged)) == _comparable(saved_merged):
        return
    if not saved_merged:
        raise ValueError(
            f"`model` has adapters merged into it ({merged}); the adapter in "
            f"{str(directory)!r} was trained on the base without them, so loading it "
            "here would apply an adapter on top of a changed base (twice, if it is the "
            "one merged). Load it onto the unmerged base."
        )
    raise ValueError(
        f"The adapter in {str(directory)!r} was trained on a base with adapters merged "
        f"into it ({[(d['recipe']['method'], d['target_paths']) for d in saved_merged]}). "
        "Load and merge those into the base first. Received: `model` with "
        f"{merged or 'no adapter'} merged"
    )


def _check_quantization(saved, current, when, directory):
    differences = [
        f"{path}: the adapter's model had {saved.get(path, 'a float layer')}, this model "
        f"has {current.get(path, 'a float layer')}"
        for path in sorted(set(saved) | set(current))
        if saved.get(path) != current.get(path)
    ]
    if differences:
        raise ValueError(
            f"The adapter in {str(directory)!r} was trained over other layer quantization "
            f"than this model has {when} (a LoRA adapter is loaded onto the float or "
            "quantized base it was trained on; QLoRA adapters quantize a float base "
            f"themselves). Received: {'; '.join(differences)}"
        )


def load_adapter(model: keras.Model, directory: str | os.PathLike) -> keras.Model:
    """Applies a saved adapter's recipes to a base model and loads their weights.

    Everything that can be checked before changing the model is checked
    first: both files are read and parsed, the weights file's SHA-256 is
    checked, and the base model is compared with the adapter's (its config,
    what was merged into it, its quantized layers). If a check that needs
    the recipes applied fails (a tensor that does not fit), the model is put
    back as it was, so a retry with a good directory works.

    Args:
        model: the base model, as before `apply` (with the same adapters
            merged into it as the base the adapter was trained on, if any).
        directory: a directory written by `save_adapter`.

    Returns:
        The model the last recipe's `apply` returns: `model` changed in
        place, or for a recipe that builds a new model around it
        (`Classifier`), that new model. Its outputs equal the saved model's.

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: if a file cannot be parsed or is corrupt (naming it),
            if `model` is a different base (naming the difference), already
            has recipes applied, has other adapters merged into it, or if a
            saved tensor has no place in the model or a trained weight has
            no saved tensor.
    """
    directory = pathlib.Path(directory)
    config = read_adapter_config(directory)
    tensors = load_tensors(directory / WEIGHTS_FILE, sha256=config.get("weights_sha256"))
    return apply_adapter_state(model, config, tensors, directory)


def apply_adapter_state(model: keras.Model, config: dict, tensors: dict,
                        source: str | os.PathLike = "<memory>") -> keras.Model:
    """`load_adapter` from an `adapter_state` in memory (same checks and result).

    Args:
        model: the base model, as for `load_adapter`.
        config: an adapter config (`adapter_state(...)[0]` or a read file).
        tensors: `{key: array}` of the adapter's tensors.
        source: where they came from, named in error messages.
    """
    directory = pathlib.Path(source)
    check_base_model(model, config)
    _check_model_state(model, config, directory)
    saved_quantized = config.get("quantized_layers")
    if saved_quantized is not None:
        # Recipes may quantize layers (QLoRA), never the other way round.
        current = quantized_layers(model)
        _check_quantization({p: saved_quantized.get(p) for p in current if p in saved_quantized},
                            current, "before the adapter is applied", directory)
    try:
        recipes = [_pinned(description) for description in saved_recipes(config)]
    except (TypeError, ValueError) as error:
        raise type(error)(f"{directory}: {error}") from error

    record = applied_recipes(model)
    base = model
    try:
        with undo_surgery_on_error(base):
            for recipe in recipes:
                model = recipe.apply_for_loading(model)
            _check_target_paths(saved_recipes(config), split_merged_recipes(model)[1], directory)
            if saved_quantized is not None:
                _check_quantization(saved_quantized, quantized_layers(model), "with it applied",
                                    directory)
            _assign_saved_tensors(model, tensors)
    except BaseException:
        restore_applied_recipes(base, record)
        raise
    return model


def _check_target_paths(saved, applied, directory):
    """Each re-applied recipe must have wrapped the very layers it wrapped when saved."""
    for description, entry in zip(saved, applied):
        paths = description.get("target_paths") or []
        if paths and entry.target_paths != paths:
            raise ValueError(
                f"Recipe {description['recipe'].get('method')!r} of the adapter in "
                f"{str(directory)!r} wrapped other layers on this model. Received: "
                f"{entry.target_paths}, saved {paths}"
            )


def _assign_saved_tensors(model, tensors):
    """Checks every key and shape, then assigns: nothing is assigned if anything misfits."""
    variables = _trained_tensors(model)
    for key, variable in list(variables.items()):
        # Files written before wrapper weights were keyed by their layer's
        # path (IA3, DoRA, bottleneck, prefix) hold them under the variable's path.
        if key not in tensors and variable.path in tensors:
            variables[variable.path] = variables.pop(key)
    missing = sorted(set(variables) - set(tensors))
    unexpected = sorted(set(tensors) - set(variables))
    if missing or unexpected:
        raise ValueError(
            "The adapter file does not fit the model. Received: tensors missing "
            f"from the file: {missing}; tensors with no place in the model: {unexpected}"
        )
    for key, variable in variables.items():
        if tuple(tensors[key].shape) != tuple(variable.shape):
            raise ValueError(
                f"Shape mismatch for {key!r}. Received: {tensors[key].shape} in the file, "
                f"the model has {tuple(variable.shape)}"
            )
    for key, variable in variables.items():
        variable.assign(tensors[key].astype(keras.backend.standardize_dtype(variable.dtype)))


def same_adapter_layout(model: keras.Model, config: dict) -> bool:
    """Whether `model`'s live recipes are the adapter config's, on the same layers.

    Then the adapter's tensors fit the live variables one for one
    (`assign_adapter_tensors`), without re-applying any recipe.
    """
    live = split_merged_recipes(model)[1]
    return bool(live) and _comparable(_describe(live)) == _comparable(saved_recipes(config))


def assign_adapter_tensors(model: keras.Model, tensors: dict) -> None:
    """Assigns an adapter's tensors to the live recipes' variables.

    Every key and shape is checked first; nothing is assigned if anything
    misfits.

    Raises:
        ValueError: naming missing / unexpected keys or a shape mismatch.
    """
    _assign_saved_tensors(model, tensors)


def merge_adapters(model: keras.Model) -> list[str]:
    """Folds every mergeable adapter into its layer and removes the wrappers.

    `Recipe.merge` without a batch or options (each wrapper's
    `merged_layer()`; over a quantized layer a QLoRA adapter is requantized,
    with a warning), returning only the merged paths. Merging is idempotent:
    a model with no adapters left is returned unchanged. The model keeps the
    record of what was merged into it
    (`kerasft.recipes.base.split_merged_recipes`): `save_adapter` then has
    nothing left to save, and `load_adapter` refuses to apply an adapter
    trained on the unmerged base.

    Returns:
        The list of merged layer paths.

    Raises:
        ValueError: if the model holds an adapter that cannot be merged.
    """
    return merge_wrappers(model)["merged"]
