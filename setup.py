"""Packaging beyond what `pyproject.toml` can declare: the shipped data folders.

The wheel carries the repository's `datasets/` and `recipes/configs/` whole,
mapped into the package as `kerasft/_shipped/<folder>` (found at run time by
`kerasft.shipped.shipped_dir`). Every directory below a shipped folder is
walked at build time and maps with all its files, so a file or sub-folder
added there is in the next wheel with no edit here.
"""

import os

from setuptools import find_packages, setup

SHIPPED_FOLDERS = ("datasets", "recipes/configs")  # as kerasft.shipped.SHIPPED_FOLDERS


def _shipped_packages():
    """`{package name: directory}` of every directory under the shipped folders.

    Each directory is listed as a package of its own (not as data of its
    parent) because setuptools treats a directory with an importable name as
    a package and warns when one is only data.
    """
    packages = {}
    for folder in SHIPPED_FOLDERS:
        for directory, subdirectories, _ in os.walk(folder):
            subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
            packages["kerasft._shipped." + directory.replace(os.sep, ".")] = directory
    return packages


SHIPPED = _shipped_packages()

setup(
    packages=[*find_packages(include=["kerasft", "kerasft.*"]), *SHIPPED],
    package_dir=SHIPPED,
    package_data={package: ["*"] for package in SHIPPED},
)
