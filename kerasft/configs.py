"""Run config files (`recipes/configs/`, run by `kerasft.finetune`): read, override, validate.

A program declares the keys it reads as a schema and calls
`load_script_config` (`kerasft.finetune.load_config` does); an unknown key
(a typo, or a setting the run does not support such as
`training.gradient_accumulation_steps` where it is not listed) or a missing
required key raises a ValueError naming the file, the section and the valid
keys, before any model is loaded.

    SCHEMA = {
        "seed": None,                      # a plain value
        "recipe": RECIPE,                  # checked by `recipe_from_config`
        "training": ["batch_size", "epochs", "gradient_accumulation_steps?"],
    }

A key ending in `?` is optional; all others are required.
"""

from typing import Iterable, Mapping

from kerasft.recipes.base import parse_yaml, read_config_file, recipe_from_config

RECIPE = "recipe"
"""Schema marker: the section is a recipe config, validated by building it."""


def _split_keys(keys):
    required = {key for key in keys if not key.endswith("?")}
    optional = {key[:-1] for key in keys if key.endswith("?")}
    return required, optional


def check_keys(mapping: Mapping, keys: Iterable[str], source: str, section: str | None = None) -> None:
    """Raises a ValueError for a key of `mapping` not in `keys`, or a required one missing.

    Args:
        mapping: the section read from the file.
        keys: the valid keys; those ending in `?` are optional.
        source: the config file, named in the error.
        section: the section's name (None for the top level).
    """
    where = f"the `{section}` section of {source}" if section else source
    if not isinstance(mapping, Mapping):
        raise ValueError(
            f"{where} must be a mapping of keys {sorted(k.rstrip('?') for k in keys)}. "
            f"Received: {section or 'config'}={mapping!r}"
        )
    required, optional = _split_keys(keys)
    valid = sorted(required | optional)
    prefix = f"{section}." if section else ""
    unknown = sorted(set(mapping) - set(valid))
    if unknown:
        raise ValueError(
            f"Unknown key{'s' if len(unknown) > 1 else ''} "
            f"{[prefix + key for key in unknown]} in {where}. Valid keys: {valid}"
        )
    missing = sorted(required - set(mapping))
    if missing:
        raise ValueError(
            f"Missing key{'s' if len(missing) > 1 else ''} "
            f"{[prefix + key for key in missing]} in {where}. Valid keys: {valid} "
            f"(optional: {sorted(optional)})"
        )


def check_config(config: Mapping, schema: Mapping, source: str) -> None:
    """Validates a whole script config against `schema` (see the module docstring).

    Raises:
        ValueError: naming `source`, the section and key, and the valid keys.
    """
    check_keys(config, schema, source)
    for key, keys in schema.items():
        name = key.rstrip("?")
        if name not in config or keys is None:
            continue
        if keys == RECIPE:
            recipe_from_config(config[name], source=source, section=name)
        else:
            check_keys(config[name], keys, source, section=name)


def apply_overrides(config: dict, overrides: Iterable[str], source: str = "--set") -> dict:
    """Applies `section.key=value` overrides (the value in YAML syntax) to `config`.

    Args:
        config: the config, changed in place.
        overrides: strings such as `"training.epochs=2"`.
        source: named in errors.

    Returns:
        `config`.
    """
    for override in overrides:
        dotted, equals, value = override.partition("=")
        if not equals or not dotted:
            raise ValueError(
                f"An override must read `section.key=value`. Received: --set {override!r}"
            )
        *sections, key = dotted.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ValueError(
                    f"`{section}` is not a section of {source}, so it takes no keys. "
                    f"Received: --set {override!r}"
                )
        node[key] = parse_yaml(value, source=f"--set {override!r}")
    return config


def load_script_config(path, overrides: Iterable[str] = (), schema: Mapping | None = None) -> dict:
    """Reads a script's config file, applies `--set` overrides and validates it.

    Args:
        path: the YAML or JSON file.
        overrides: `section.key=value` strings (see `apply_overrides`).
        schema: the keys the script reads (see the module docstring); None
            skips validation.

    Returns:
        The config dict.
    """
    overrides = list(overrides)
    config = apply_overrides(read_config_file(path), overrides, source=str(path))
    if schema is not None:
        source = str(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
        check_config(config, schema, source)
    return config


def accumulated_batches(batches, gradient_accumulation_steps: int = 1):
    """What to `fit` for `gradient_accumulation_steps`, and the optimizer steps per epoch.

    With more than one micro-batch per step, the batches are wrapped in
    `kerasft.losses.TokenNormalizedBatches` (the loss is then the mean over
    the trained tokens of the whole step, as `Recipe.compile` documents).

    Args:
        batches: a `kerasft.data.SequenceBatches` (or any PyDataset of
            `(x, y, sample_weight)`).
        gradient_accumulation_steps: micro-batches per optimizer step.

    Returns:
        `(fit_input, optimizer_steps_per_epoch)`.

    Raises:
        ValueError: for a non-positive or non-integer count, or batches per
            epoch that are not a multiple of it (a partial last step would
            be accumulated into the next epoch's first step).
    """
    from kerasft.losses import TokenNormalizedBatches

    steps = gradient_accumulation_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            "`gradient_accumulation_steps` must be an integer >= 1. Received: "
            f"gradient_accumulation_steps={steps!r}"
        )
    if steps == 1:
        return batches, len(batches)
    if len(batches) % steps:
        raise ValueError(
            f"The {len(batches)} batches of an epoch do not split into optimizer steps of "
            f"{steps} micro-batches; choose examples / batch_size / "
            "gradient_accumulation_steps so that they do. Received: "
            f"gradient_accumulation_steps={steps}"
        )
    return TokenNormalizedBatches(batches, steps), len(batches) // steps
