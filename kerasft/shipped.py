"""Where the files kerasft ships outside its Python code are: `datasets/`, `recipes/configs/`.

In the source repository they sit next to the `kerasft` package; a wheel
carries the same folders inside the package, under `kerasft/_shipped/`
(`pyproject.toml` maps each whole folder there, so a dataset or config added
to the repository is in the next wheel with no list to update). Every module
that reads such a file asks `shipped_dir`.
"""

import os
from pathlib import Path

# The folders the wheel carries, as paths relative to the repository root.
SHIPPED_FOLDERS = ("datasets", "recipes/configs")

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(folder: str) -> Path:
    """The installed (wheel) or source-checkout copy of one shipped folder.

    Args:
        folder: one of `SHIPPED_FOLDERS`, e.g. `"datasets"`.

    Returns:
        `kerasft/_shipped/<folder>` when kerasft was installed from a wheel,
        else `<repository>/<folder>` of the source checkout the package is in.

    Raises:
        ValueError: for a folder kerasft does not ship.
        FileNotFoundError: when neither copy exists (naming both places).
    """
    if folder not in SHIPPED_FOLDERS:
        raise ValueError(f"`folder` must be one of {SHIPPED_FOLDERS}. Received: folder={folder!r}")
    installed = _PACKAGE / "_shipped" / folder
    # The checkout's copy only counts in a checkout: next to an installed
    # package, `<site-packages>/datasets` is Hugging Face's `datasets` package.
    checkout = _PACKAGE.parent / folder
    for path in (installed, checkout if (_PACKAGE.parent / "pyproject.toml").is_file() else None):
        if path is not None and path.is_dir():
            return path
    raise FileNotFoundError(
        f"kerasft's shipped `{folder}/` folder was found neither in the package "
        f"({installed}) nor in a source checkout ({checkout}). Reinstall kerasft, or "
        f"run from a checkout of its repository. Received: folder={folder!r}"
    )


def shipped_config(name: str) -> Path:
    """A run config: a path to a file, or the name of a shipped one (`sft_lora`).

    Args:
        name: a path to a YAML or JSON file, or a config's name in
            `recipes/configs/` (with or without `.yaml`).

    Returns:
        The path of the file.

    Raises:
        FileNotFoundError: for a name that is neither a file nor a shipped
            config (listing the shipped ones).
    """
    path = Path(os.path.expanduser(name))
    if path.is_file():
        return path
    configs = shipped_dir("recipes/configs")
    candidate = configs / (name if name.endswith((".yaml", ".yml", ".json")) else f"{name}.yaml")
    if os.sep not in name and "/" not in name and candidate.is_file():
        return candidate
    names = sorted(p.stem for p in configs.glob("*.yaml"))
    raise FileNotFoundError(
        f"No config file `{name}`, and no shipped config of that name (shipped: "
        f"{', '.join(names)}). Received: config={name!r}"
    )
