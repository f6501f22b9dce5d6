"""The recipe registry and recipe config files: method names, YAML/JSON, strict arguments.

`register_recipe` makes a recipe class buildable by `method` name;
`recipe_from_config` builds one from `{"method": ..., **arguments}`, refusing
unknown keys with the file, the section and the valid keys; `read_config_file`
and `parse_yaml` read configs (YAML 1.2 floats such as `1e-3`), naming the
file in every error.
"""

import difflib
import inspect
import json
import pathlib
import re

_REGISTRY = {}


def register_recipe(method):
    """Class decorator: makes a recipe buildable from configs by `method` name."""

    def decorator(cls):
        cls.method = method
        _REGISTRY[method] = cls
        return cls

    return decorator


def config_location(source, section):
    """`" in the `recipe` section of path/to/file.yaml"`-style context for errors."""
    place = f" in the `{section}` section" if section else ""
    return place + (f" of {source}" if source else "")


def base_recipe(base, method: str, optional: bool = False, refused: tuple = ()):
    """The `base=` recipe of a recipe built on another (classifier, reward model, DPO, GRPO).

    Args:
        base: a recipe, its config dict (`{"method": ..., ...}`), or None
            when `optional`.
        method: the wrapping recipe's name, for errors.
        optional: whether None (no base: only the wrapping recipe trains) is allowed.
        refused: recipe classes that cannot be a base (the wrapping kind itself).

    Raises:
        ValueError: naming `base` and what was received.
    """
    from kerasft.recipes.base import Recipe

    if base is None and optional:
        return None
    if isinstance(base, dict):
        base = recipe_from_config(base)
    if not isinstance(base, Recipe):
        expected = "a recipe (e.g. LoRA(...)), its config dict" + (" or None" if optional else "")
        raise ValueError(f"`base` of {method} must be {expected}. Received: base={base!r}")
    for cls in refused:
        if isinstance(base, cls):
            raise ValueError(
                f"`base` of {method} cannot itself be a {cls.__name__}; give the recipe "
                f"that adapts the model (e.g. LoRA). Received: base={base!r}"
            )
    return base


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
    where = config_location(source, section)
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
    return build_recipe(_REGISTRY[method], method, config, source, section)


def build_recipe(cls, method, config, source, section):
    """`cls(**config)`, refusing unknown keys and bad values with `source` / `section` named."""
    where = config_location(source, section)
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
