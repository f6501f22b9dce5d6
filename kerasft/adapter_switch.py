"""Running a model with its adapters switched off: the frozen base, no second copy.

DPO's and GRPO's reference policy, the forgetting check's base model and a
user's "what did the base say?" all need the model as it was before
training. Every adapter method in kerasft is an `AdapterWrapper` (LoRA,
DoRA, QLoRA, IA3, bottleneck adapters, prefixes and soft prompts, QAT), so
switching each wrapper to call its wrapped layer alone gives exactly the
base model from the same weights.

The same module keeps several named adapters on one base (`add_adapter`,
`set_adapter`, `combine_adapters`, `save_adapters` / `load_adapters`); see
the design note above `_NamedAdapters`.
"""

import contextlib
import json
import math
import os
import pathlib
import re
from collections.abc import Iterator

import keras
import numpy as np

from kerasft.targeting import adapter_wrappers

# Keras (3.15, `keras/src/trainers/trainer.py`) and keras-hub's CausalLM
# (0.32, `causal_lm.py`) cache their traced functions here; a trace made
# with the adapters on would keep them on.
_COMPILED_FUNCTIONS = ("train_function", "test_function", "predict_function", "generate_function")


# Bumped at every switch: kerasft's own caches of traced functions
# (`evaluate.perplexity`'s scorers, `evaluate.greedy_generate`'s sampler)
# compare it with the value they were traced at, as a switch changes what a
# trace computes without changing the model's variables.
_switches = 0


def switch_count() -> int:
    """How many times any model's adapters were switched in this process."""
    return _switches


def _note_switch() -> None:
    global _switches
    _switches += 1


def reset_compiled_functions(model: keras.Model) -> None:
    """Drops `model`'s cached traced functions so that the next call traces anew."""
    _note_switch()
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
    _note_switch()
    if reset_compiled:
        reset_compiled_functions(model)
    try:
        yield model
    finally:
        for wrapper, enabled in zip(wrappers, previous):
            wrapper.adapter_enabled = enabled
        _note_switch()
        if reset_compiled:
            reset_compiled_functions(model)


# ---------------------------------------------------------------------------
# Named adapters: several adapters on one base, one of them live at a time.
#
# Design (the simpler of the two the issue allows, measured by what changes):
# the model carries the wrappers of the *active* adapter only, exactly as if
# it had only ever had that one; every other named adapter is held in memory
# as the `(config, tensors)` pair an adapter folder holds
# (`kerasft.adapters.adapter_state`). Switching stores the active adapter's
# live weights (so training under a name persists), then either assigns the
# next adapter's tensors into the same variables (same recipes on the same
# layers) or takes the wrappers out and applies the next adapter's recipes
# (`apply_adapter_state`, as `load_adapter` does). No wrapper class learns
# about names, and outputs with "a" active are those of a model that only
# had "a", by construction.
# ---------------------------------------------------------------------------

NAMED_ADAPTERS_FILE = "kerasft_adapters.json"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class _NamedAdapters:
    """What a model holds besides its live wrappers: `{name: (config, tensors)}`, the active name."""

    def __init__(self):
        self.states: dict[str, tuple[dict, dict]] = {}
        self.active: str | None = None


def _registry(model) -> _NamedAdapters:
    registry = getattr(model, "_kerasft_named_adapters", None)
    if registry is None:
        registry = _NamedAdapters()
        # object.__setattr__ keeps it out of Keras's state tracking.
        object.__setattr__(model, "_kerasft_named_adapters", registry)
    return registry


def _check_name(name):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            "An adapter name is a non-empty string of letters, digits, '_', '-' and '.' "
            f"(it names a folder when saved), not starting with '.' or '-'. Received: name={name!r}"
        )


def _check_known(model, name):
    names = adapter_names(model)
    if name not in names:
        raise ValueError(f"No adapter named {name!r}. Received: name={name!r}; adapters: {names}")


def adapter_names(model: keras.Model) -> list[str]:
    """The names of the adapters `model` holds, in the order they were added."""
    return list(_registry(model).states)


def active_adapter(model: keras.Model) -> str | None:
    """The name of the adapter `model` runs with, or None (the base)."""
    return _registry(model).active


def _live_state(model):
    """The live adapter as `(config, tensors)`, refusing what names cannot hold."""
    from kerasft.adapters import adapter_state

    config, tensors = adapter_state(model)
    in_wrappers = {key for w in adapter_wrappers(model) for key in w.adapter_weights()}
    other = sorted(set(tensors) - in_wrappers)
    if other:
        raise ValueError(
            "Named adapters hold adapters made of wrapper layers (LoRA, DoRA, IA3, ...); "
            f"this one also trained other weights, which switching cannot take out: {other[:5]}"
        )
    return config, tensors


def _sync_active(model):
    """Stores the active adapter's live weights under its name (training persists).

    Raises:
        ValueError: if `model` has a live adapter without a name (switching
            would drop it).
    """
    from kerasft.recipes.base import split_merged_recipes

    registry = _registry(model)
    if registry.active is not None:
        registry.states[registry.active] = _live_state(model)
    elif split_merged_recipes(model)[1] or adapter_wrappers(model):
        raise ValueError(
            "`model` runs an adapter that has no name, which switching would drop; name it "
            "first with `add_adapter(model, name)`. Received: live adapters at "
            f"{[w.target_path for w in adapter_wrappers(model)][:3]}"
        )


def _strip(model):
    """Takes every live adapter wrapper out, leaving the base (and what was merged into it)."""
    from kerasft.recipes.base import restore_applied_recipes, split_merged_recipes
    from kerasft.targeting import refresh_after_surgery, replace_layer

    merged, _ = split_merged_recipes(model)
    wrappers = adapter_wrappers(model)
    if any(getattr(w, "merged", False) for w in wrappers):
        raise ValueError(
            "An adapter merged into its layer cannot be switched away. Received: merged "
            f"adapters at {[w.target_path for w in wrappers if w.merged][:3]}"
        )
    for wrapper in wrappers:
        replace_layer(model, wrapper, wrapper.layer)
    refresh_after_surgery(model)
    restore_applied_recipes(model, merged)


def _activate(model, name):
    from kerasft.adapters import apply_adapter_state, assign_adapter_tensors, same_adapter_layout

    registry = _registry(model)
    if name is None:
        _strip(model)
    else:
        config, tensors = registry.states[name]
        if registry.active is not None and same_adapter_layout(model, config):
            assign_adapter_tensors(model, tensors)
            for wrapper in adapter_wrappers(model):
                wrapper.adapter_enabled = True
        else:
            _strip(model)
            result = apply_adapter_state(model, config, tensors, f"<adapter {name!r}>")
            if result is not model:
                raise ValueError(
                    f"Adapter {name!r} builds a new model around the base (a classifier); "
                    "named adapters switch adapters inside one model."
                )
    registry.active = name
    reset_compiled_functions(model)


def add_adapter(
    model: keras.Model,
    name: str,
    source: str | os.PathLike | None = None,
    recipe=None,
) -> keras.Model:
    """Adds an adapter to `model` under `name`.

    Three ways, by what is passed:
    - `source`, an adapter folder (kerasft's, or PEFT's `adapter_config.json`
      + `adapter_model.safetensors`): the adapter is read, checked against
      the base and stored; the active adapter does not change.
    - `recipe` (e.g. `LoRA(rank=8)`): a new adapter from the recipe becomes
      the active one, ready to train under `name` with `model.fit`.
    - neither: the recipes already applied to `model` (a `recipe.apply` and
      a `fit`, say) become the adapter `name`, active.

    Args:
        model: a base model (a keras-hub causal LM) or one with its first
            adapter applied.
        name: the adapter's name (letters, digits, `_ - .`).
        source: an adapter folder.
        recipe: a kerasft recipe made of wrapper layers.

    Returns:
        `model`.

    Raises:
        ValueError: for a name already used or not allowed, both `source`
            and `recipe`, nothing to capture, or an adapter that does not fit
            (the model is then as before).
    """
    _check_name(name)
    registry = _registry(model)
    if name in registry.states:
        raise ValueError(f"An adapter named {name!r} exists already. Received: name={name!r}")
    if source is not None and recipe is not None:
        raise ValueError(
            f"Pass `source` (a folder) or `recipe`, not both. Received: source={str(source)!r}, "
            f"recipe={recipe!r}"
        )
    if source is None and recipe is None:
        if registry.active is not None:
            raise ValueError(
                f"`model` runs adapter {registry.active!r}; pass `source=` (a folder) or "
                f"`recipe=` to add another. Received: name={name!r}"
            )
        registry.states[name] = _live_state(model)
        registry.active = name
        return model
    if recipe is None:
        registry.states[name] = _read_state(model, source)
        return model
    _sync_active(model)
    previous = registry.active
    _strip(model)
    try:
        recipe.apply(model)
        registry.states[name] = _live_state(model)
    except BaseException:
        _strip(model)
        registry.states.pop(name, None)
        if previous is not None:
            _activate(model, previous)
        raise
    registry.active = name
    reset_compiled_functions(model)
    return model


def _read_state(model, source):
    """An adapter folder as `(config, tensors)`, checked by applying it to the stripped base."""
    from kerasft.adapters import load_adapter

    source = pathlib.Path(source)
    registry = _registry(model)
    _sync_active(model)
    previous = registry.active
    _strip(model)
    registry.active = None
    try:
        if (source / "adapter_model.safetensors").is_file():
            from kerasft.export.peft import load_peft_adapter

            load_peft_adapter(model, source)
        else:
            load_adapter(model, source)
        state = _live_state(model)
    finally:
        _strip(model)
        if previous is not None:
            _activate(model, previous)
    return state


def set_adapter(model: keras.Model, name: str | None) -> keras.Model:
    """Makes adapter `name` the active one (None: the base, no adapter).

    The active adapter's current weights are kept under its name first, so
    an adapter trained while active keeps its training.

    Raises:
        ValueError: for an unknown name (listing the known ones).
    """
    if name is not None:
        _check_known(model, name)
    _sync_active(model)
    _activate(model, name)
    return model


def delete_adapter(model: keras.Model, name: str) -> None:
    """Forgets adapter `name`; if it was active, the model runs as its base."""
    _check_known(model, name)
    registry = _registry(model)
    if registry.active == name:
        _activate(model, None)
    del registry.states[name]


def _lora_factors(config, tensors, name):
    """`{path: (A, B, scale)}` of a plain LoRA adapter state."""
    from kerasft.adapters import saved_recipes

    recipes = saved_recipes(config)
    recipe = recipes[0]["recipe"] if len(recipes) == 1 else {}
    if recipe.get("method") != "lora" or recipe.get("use_dora"):
        raise ValueError(
            "Only plain LoRA adapters (one LoRA recipe, no DoRA) combine, as in PEFT. "
            f"Received: adapter {name!r} with recipes {[r['recipe'].get('method') for r in recipes]}"
            + (" (use_dora=True)" if recipe.get("use_dora") else "")
        )
    factors = {}
    for path in recipes[0]["target_paths"]:
        a, b = tensors[f"{path}/lora_a"], tensors[f"{path}/lora_b"]
        rank = a.shape[-1]
        root = math.sqrt(rank) if recipe["use_rslora"] else rank
        factors[path] = (a, b, recipe["alpha"] / root)
    return recipe, factors


def combine_adapters(
    model: keras.Model,
    names: list[str],
    weights: list[float],
    new_name: str,
    combination_type: str = "cat",
) -> keras.Model:
    """Adds `new_name`: the weighted combination of LoRA adapters `names`.

    As PEFT's `add_weighted_adapter`:
    - `"cat"`: the factors are concatenated (rank = the sum of the ranks),
      so the update is exactly `sum(w_i * scale_i * A_i @ B_i)`.
    - `"linear"`: same-rank factors are summed, `A = sum(sqrt(w_i scale_i) A_i)`
      and likewise `B`; the product then has cross terms, so this is not the
      weighted sum of the updates (exact for one adapter).
    The new adapter is stored, not activated.

    Args:
        model: a model holding the named adapters.
        names: LoRA adapters (no DoRA) on the same layers.
        weights: one number per name.
        new_name: the name of the combination.
        combination_type: `"cat"` or `"linear"`.

    Returns:
        `model`.

    Raises:
        ValueError: for unknown names, other methods, different layers or
            ranks (`"linear"`), negative weights with `"linear"`, or a bad
            `combination_type`.
    """
    from kerasft.recipes.lora import LoRA

    _check_name(new_name)
    if combination_type not in ("cat", "linear"):
        raise ValueError(
            "`combination_type` must be 'cat' or 'linear'. Received: "
            f"combination_type={combination_type!r}"
        )
    if not names or len(names) != len(weights):
        raise ValueError(
            "`names` and `weights` must be non-empty and of equal length. Received: "
            f"names={names!r}, weights={weights!r}"
        )
    if new_name in adapter_names(model):
        raise ValueError(f"An adapter named {new_name!r} exists already. Received: new_name={new_name!r}")
    for name in names:
        _check_known(model, name)
    _sync_active(model)
    registry = _registry(model)
    parsed = [_lora_factors(*registry.states[name], name) for name in names]
    paths = list(parsed[0][1])
    for name, (_, factors) in zip(names, parsed):
        if sorted(factors) != sorted(paths):
            raise ValueError(
                f"Combined adapters must adapt the same layers. Received: {names[0]!r} at "
                f"{sorted(paths)}, {name!r} at {sorted(factors)}"
            )
    if combination_type == "linear":
        if any(w < 0 for w in weights):
            raise ValueError(f"'linear' takes non-negative weights. Received: weights={weights!r}")
        for path in paths:
            ranks = {f[path][0].shape[-1] for _, f in parsed}
            if len(ranks) > 1:
                raise ValueError(
                    f"'linear' needs equal ranks; use 'cat'. Received: ranks {sorted(ranks)} at {path!r}"
                )
    ranks = {}
    tensors = {}
    for path in paths:
        parts = [factors[path] for _, factors in parsed]
        if combination_type == "cat":
            rank = sum(a.shape[-1] for a, _, _ in parts)
            a = np.concatenate([a for a, _, _ in parts], axis=-1)
            b = np.concatenate([w * scale * b for (_, b, scale), w in zip(parts, weights)], axis=0)
        else:
            rank = parts[0][0].shape[-1]
            roots = [math.sqrt(w * scale) for (_, _, scale), w in zip(parts, weights)]
            a = sum(r * a for r, (a, _, _) in zip(roots, parts))
            b = sum(r * b for r, (_, b, _) in zip(roots, parts))
        ranks[path] = rank
        tensors[f"{path}/lora_a"] = np.asarray(a, "float32")
        tensors[f"{path}/lora_b"] = np.asarray(b, "float32")
    # alpha = rank gives scale 1 at the most common rank (PEFT's choice); layers
    # of another rank get their B divided by their own scale, so stay exact.
    default_rank = max(set(ranks.values()), key=list(ranks.values()).count)
    recipe = LoRA(rank=default_rank, alpha=float(default_rank), targets=paths,
                  dropout=parsed[0][0]["dropout"],
                  rank_pattern={p: r for p, r in ranks.items() if r != default_rank} or None)
    for path, rank in ranks.items():
        tensors[f"{path}/lora_b"] = tensors[f"{path}/lora_b"] * (rank / default_rank)
    config = dict(registry.states[names[0]][0])
    description = {"recipe": recipe.get_config(), "target_paths": paths}
    config.update(recipe=description["recipe"], recipes=[description], method="lora",
                  target_paths=paths, ranks=ranks)
    config.pop("weights_sha256", None)
    registry.states[new_name] = (config, tensors)
    return model


def save_adapters(model: keras.Model, directory: str | os.PathLike) -> pathlib.Path:
    """Writes every named adapter to `directory/<name>/` and the names to `kerasft_adapters.json`.

    Each sub-folder is an ordinary kerasft adapter folder (`load_adapter`
    reads it alone); `load_adapters` restores all names and the active one.
    """
    from kerasft.adapters import write_adapter_state
    from kerasft.tensor_files import atomic_write

    _sync_active(model)
    registry = _registry(model)
    if not registry.states:
        raise ValueError(f"`model` holds no named adapters. Received: model={model.name!r}")
    directory = pathlib.Path(directory)
    for name, (config, tensors) in registry.states.items():
        write_adapter_state(config, tensors, directory / name)
    index = {"format_version": 1, "adapters": list(registry.states), "active": registry.active}
    text = json.dumps(index, indent=2)
    atomic_write(directory / NAMED_ADAPTERS_FILE, lambda tmp: pathlib.Path(tmp).write_text(text))
    return directory


def load_adapters(model: keras.Model, directory: str | os.PathLike) -> keras.Model:
    """Adds every adapter `save_adapters` wrote, under its name, and activates the saved active one.

    Raises:
        FileNotFoundError: if `directory` has no `kerasft_adapters.json`.
        ValueError: as `add_adapter`, naming the file.
    """
    directory = pathlib.Path(directory)
    path = directory / NAMED_ADAPTERS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No {NAMED_ADAPTERS_FILE} in the folder (written by `save_adapters`). "
            f"Received: directory={str(directory)!r}"
        )
    try:
        index = json.loads(path.read_text())
        names, active = list(index["adapters"]), index["active"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"Cannot read {path}. Received: {error!r}") from error
    for name in names:
        add_adapter(model, name, directory / name)
    if active is not None:
        set_adapter(model, active)
    return model
