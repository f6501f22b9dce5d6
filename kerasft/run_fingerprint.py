"""The fingerprint of a training run: what a resumed run must have in common with the saved one.

`training_config` collects the applied recipe's config, the optimizer's
config (learning-rate schedule included, per-instance names and
backend-specific modules left out) and a caller's data description, all JSON
safe; `training_fingerprint` is the SHA-256 of its canonical JSON, and
`config_differences` says in words where two such configs differ.
`kerasft.callbacks.TrainingCheckpoint` records them with every checkpoint.
"""

import hashlib
import json
import math
from typing import Any

import keras
import numpy as np


def _json_safe(value):
    """A copy of `value` that `json.dumps` writes the same way every time."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    # No repr(): it may hold a memory address, which would change every run.
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _without_instance_details(config):
    # Keras names optimizers `adam_w`, `adam_w_1`, ... per instance in a
    # process, and a class's `module` is backend-specific
    # (`keras.src.backend.torch.optimizers.torch_adamw`): neither says what
    # the run trains with.
    if isinstance(config, dict):
        is_optimizer = "learning_rate" in config or "inner_optimizer" in config
        return {
            k: _without_instance_details(v)
            for k, v in config.items()
            if not (k == "name" and is_optimizer) and not (k == "module" and "class_name" in config)
        }
    if isinstance(config, list):
        return [_without_instance_details(v) for v in config]
    return config


def canonical_json(value: Any) -> str:
    """`value` as JSON with sorted keys and no spaces: the text the fingerprint hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def training_config(model: keras.Model, data_config: Any = None) -> dict:
    """`{"recipe", "optimizer", "data"}`: what identifies a training run.

    Args:
        model: a compiled model (a kerasft recipe applied, or not).
        data_config: any JSON-able description of the training data, or None.

    Returns:
        A JSON-safe dict: the applied recipe's config
        (`kerasft.recipes.base.applied_recipe_config`), the optimizer's
        `get_config()` with its learning-rate schedule (instance names left
        out), and `data_config`.
    """
    from kerasft.recipes.base import applied_recipe_config

    return {
        "recipe": _json_safe(applied_recipe_config(model)),
        "optimizer": _without_instance_details(_json_safe(model.optimizer.get_config())),
        "data": _json_safe(data_config),
    }


def training_fingerprint(config: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of a `training_config`."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def _flatten(value, prefix=""):
    if isinstance(value, dict) and value:
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def config_differences(saved: dict, current: dict) -> list[str]:
    """Where two `training_config`s differ, one line per part that does.

    Args:
        saved: the config recorded with a checkpoint.
        current: the config of the run about to resume it.

    Returns:
        For example `["recipe differs in alpha (checkpoint 8.0, this run 32.0)"]`:
        per part (`recipe`, `optimizer`, `data`), up to 8 differing keys
        (dotted paths) with both values, shortened to 60 characters.
    """
    lines = []
    for part in ("recipe", "optimizer", "data"):
        old, new = saved.get(part), current.get(part)
        if not (isinstance(old, dict) and isinstance(new, dict)):
            if old != new:
                lines.append(f"{part} differs (checkpoint {_short(old)}, this run {_short(new)})")
            continue
        old, new = _flatten(old), _flatten(new)
        keys = sorted(k for k in set(old) | set(new) if old.get(k, KeyError) != new.get(k, KeyError))
        if not keys:
            continue
        details = ", ".join(
            f"{k} (checkpoint {_short(old[k]) if k in old else 'missing'}, "
            f"this run {_short(new[k]) if k in new else 'missing'})"
            for k in keys[:8]
        )
        more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
        lines.append(f"{part} differs in {details}{more}")
    return lines
