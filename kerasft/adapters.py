"""Adapter files: save what a recipe trained, load it onto a fresh base, merge it.

An adapter directory holds two files:
- `adapter.safetensors`: the trained tensors, keyed by layer path
  (`decoder_block_3/attention/query/lora_a`), never by position;
- `adapter_config.json`: the recipe config (method, rank, alpha, dropout,
  rslora, targets), the exact target paths, the dtype, the kerasft version,
  and the base model's class, config and a fingerprint of that config.
"""

import hashlib
import json
import os
import pathlib
import tempfile

import keras
import numpy as np

from kerasft.recipes.base import applied_recipe_config, recipe_from_config
from kerasft.recipes.lora import lora_layers
from kerasft.targeting import adapter_wrappers, refresh_after_surgery, replace_layer

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
# Settings that do not change which weights fit where.
_FINGERPRINT_IGNORED_KEYS = ("name", "trainable", "dtype")


def _backbone(model):
    return getattr(model, "backbone", model)


def base_model_config(model):
    """The backbone config that decides whether an adapter fits, as plain JSON."""
    config = _backbone(model).get_config()
    config = {k: v for k, v in config.items() if k not in _FINGERPRINT_IGNORED_KEYS}
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def base_model_fingerprint(model):
    """A SHA-256 of `base_model_config(model)`."""
    canonical = json.dumps(base_model_config(model), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _trained_tensors(model):
    """`{key: variable}` of what the applied recipe trains or fitted (QLoRA's corrections)."""
    wrappers = lora_layers(model)
    if wrappers:
        tensors = {}
        for wrapper in wrappers:
            tensors[f"{wrapper.target_path}/lora_a"] = wrapper.lora_a
            tensors[f"{wrapper.target_path}/lora_b"] = wrapper.lora_b
            if getattr(wrapper, "residual_rank", 0):  # QLoRA's frozen error correction
                tensors[f"{wrapper.target_path}/residual_a"] = wrapper.residual_a
                tensors[f"{wrapper.target_path}/residual_b"] = wrapper.residual_b
        # Weights trained beside the adapters (e.g. a classification head).
        in_adapters = {id(v) for v in tensors.values()}
        for variable in model.trainable_variables:
            if id(variable) not in in_adapters:
                tensors[variable.path] = variable
        return tensors
    return {variable.path: variable for variable in model.trainable_variables}


def _pin_target_paths(recipe_config, target_paths, ranks):
    """The recipe config with exact LoRA targets, in its nested `base` recipe if any."""
    recipe_config = dict(recipe_config)
    if isinstance(recipe_config.get("base"), dict):
        recipe_config["base"] = _pin_target_paths(recipe_config["base"], target_paths, ranks)
    else:
        recipe_config["targets"] = target_paths
        recipe_config["rank_pattern"] = ranks
    return recipe_config


def _to_numpy(variable):
    # Not np.ascontiguousarray: it turns 0-d scalars (step counters) into (1,).
    return np.array(keras.ops.convert_to_numpy(variable), order="C", copy=True)


def _atomic_write(path, write):
    """Calls `write(tmp_path)` then renames over `path`: no torn files."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_tensors(tensors, path, metadata=None):
    """Writes `{key: array}` to a safetensors file atomically."""
    from safetensors.numpy import save_file

    arrays = {key: _to_numpy(value) for key, value in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))


def load_tensors(path):
    """Reads a safetensors file into `{key: numpy array}`."""
    from safetensors.numpy import load_file

    return load_file(str(path))


def save_adapter(model, directory):
    """Saves the weights the applied recipe trains, and its config.

    Args:
        model: a model a kerasft recipe was applied to.
        directory: created if missing; existing adapter files are replaced
            atomically.

    Returns:
        The path of the directory.
    """
    from kerasft import __version__

    recipe_config = applied_recipe_config(model)
    if recipe_config is None:
        raise ValueError(
            "`model` has no kerasft recipe applied, so there is no adapter to "
            f"save. Received: model={model.name!r}"
        )
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _trained_tensors(model)
    wrappers = lora_layers(model)
    config = {
        "method": recipe_config["method"],
        "recipe": recipe_config,
        "target_paths": [w.target_path for w in wrappers],
        "ranks": {w.target_path: w.rank for w in wrappers},
        "dtype": str(next(iter(tensors.values())).dtype) if tensors else None,
        "kerasft_version": __version__,
        "base_model_class": type(model).__name__,
        "base_model_fingerprint": base_model_fingerprint(model),
        "base_model_config": base_model_config(model),
    }
    save_tensors(tensors, directory / WEIGHTS_FILE, metadata={"format": "kerasft"})
    text = json.dumps(config, indent=2, sort_keys=True)
    _atomic_write(directory / CONFIG_FILE, lambda tmp: pathlib.Path(tmp).write_text(text))
    return directory


def read_adapter_config(directory):
    """Reads `adapter_config.json` from an adapter directory."""
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No {CONFIG_FILE} in the adapter directory. Received: directory={str(directory)!r}"
        )
    return json.loads(path.read_text())


def check_base_model(model, config):
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


def load_adapter(model, directory):
    """Applies a saved adapter's recipe to a fresh base model and loads its weights.

    Args:
        model: the base model, without the adapter (as before `apply`).
        directory: a directory written by `save_adapter`.

    Returns:
        The model the recipe's `apply` returns: `model` changed in place, or
        for a recipe that builds a new model around it (`Classifier`), that
        new model. Its outputs equal the saved model's.

    Raises:
        ValueError: if `model` is a different base (naming the config
            difference), or if a saved tensor has no place in the model or a
            trained weight has no saved tensor.
    """
    config = read_adapter_config(directory)
    check_base_model(model, config)
    recipe_config = dict(config["recipe"])
    if config["target_paths"]:
        # Exact paths: the saved adapter lands on the very same layers, even if
        # the original targets were patterns.
        recipe_config = _pin_target_paths(
            recipe_config, config["target_paths"], config["ranks"]
        )
    model = recipe_from_config(recipe_config).apply_for_loading(model)
    tensors = load_tensors(pathlib.Path(directory) / WEIGHTS_FILE)
    variables = _trained_tensors(model)
    missing = sorted(set(variables) - set(tensors))
    unexpected = sorted(set(tensors) - set(variables))
    if missing or unexpected:
        raise ValueError(
            "The adapter file does not fit the model. Received: tensors missing "
            f"from the file: {missing}; tensors with no place in the model: {unexpected}"
        )
    for key, variable in variables.items():
        value = tensors[key]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"Shape mismatch for {key!r}. Received: {value.shape} in the file, "
                f"the model has {tuple(variable.shape)}"
            )
        variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))
    return model


def merge_adapters(model):
    """Folds every mergeable adapter into its layer and removes the wrappers.

    Merging is idempotent: a model with no adapters left is returned unchanged.

    Returns:
        The list of merged layer paths.

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
    merged = []
    for wrapper in wrappers:
        wrapper.merge()
        replace_layer(model, wrapper, wrapper.layer)
        merged.append(wrapper.target_path)
    if merged:
        refresh_after_surgery(model)
    return merged
