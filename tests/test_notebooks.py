"""The notebooks run top to bottom and write their plots.

Each notebook's code cells run in order in a fresh Python process (as a
kernel would run them; the notebooks assert their own numbers: loss down,
perplexity down, exact reload). The notebooks that load the real Gemma 3
270M read `KERASFT_NOTEBOOK_MODEL`: the fast tests run them on the tiny
random model, the slow tests on the real one (about 5 GiB; run it under
`flock /tmp/kerasft-real.lock` on a shared machine).
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REAL_MODEL = [p for p in NOTEBOOKS if "KERASFT_NOTEBOOK_MODEL" in p.read_text()]

# Runs each notebook named on the command line in its own namespace and
# writes `<output>/<name>.status`: "ok" or the traceback.
RUNNER = r"""
import json, pathlib, sys, traceback, warnings
warnings.filterwarnings("ignore", message=".*non-interactive.*")  # plt.show() under Agg
output = pathlib.Path(sys.argv[1])
for path in map(pathlib.Path, sys.argv[2:]):
    namespace = {"__name__": "__main__"}
    status = "ok"
    try:
        for index, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), f"{path.name} [cell {index}]", "exec"),
                     namespace)
    except BaseException:
        status = traceback.format_exc()
    (output / f"{path.stem}.status").write_text(status)
"""


def plots_of(path):
    """The PNG files a notebook says it writes (`savefig(OUTPUT_DIR / "name.png"`)."""
    source = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    return re.findall(r'savefig\(OUTPUT_DIR / "([\w.-]+\.png)"', source)


def run_notebooks(paths, output, model):
    env = {**os.environ, "MPLBACKEND": "Agg", "KERASFT_NOTEBOOK_OUTPUT": str(output),
           "KERASFT_NOTEBOOK_MODEL": model}
    env.setdefault("KERAS_BACKEND", "jax")
    subprocess.run([sys.executable, "-c", RUNNER, str(output), *map(str, paths)],
                   cwd=output, env=env, check=True, timeout=1800)


def check(path, output):
    status = (output / f"{path.stem}.status").read_text()
    assert status == "ok", status
    for name in plots_of(path):
        png = output / path.stem / name
        assert png.is_file() and png.stat().st_size > 1000, png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_the_real_model_notebooks_plot_something():
    assert len(REAL_MODEL) >= 3
    for path in REAL_MODEL:
        assert plots_of(path), path.name


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, request):
    # Only the notebooks this session selected (the fast run: the quick start).
    selected = {item.callspec.params["path"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_notebook_runs_on_the_tiny_model_and_writes_its_plots"}
    output = tmp_path_factory.mktemp("notebooks")
    run_notebooks(sorted(selected), output, "tiny")
    return output


# The tiny runs of the real-model notebooks take about two minutes of CPU
# (generation and fit compile in each): slow tests, like the real runs.
TINY_CASES = [pytest.param(p, marks=[pytest.mark.slow] if p in REAL_MODEL else [], id=p.stem)
              for p in NOTEBOOKS]


@pytest.mark.parametrize("path", TINY_CASES)
def test_notebook_runs_on_the_tiny_model_and_writes_its_plots(path, tiny_runs):
    check(path, tiny_runs)


@pytest.mark.slow
@pytest.mark.parametrize("path", REAL_MODEL, ids=[p.stem for p in REAL_MODEL])
def test_notebook_runs_on_the_real_model_and_writes_its_plots(path, tmp_path):
    run_notebooks([path], tmp_path, "gemma3-270m")
    check(path, tmp_path)


def test_the_dpo_notebook_runs_on_the_real_model_and_plots_its_training():
    # Its runs are the parametrized cases above (tiny and real, both slow); this pins that
    # it is one of them and names the picture the slow runs check.
    path = ROOT / "notebooks" / "dpo_gemma3_270m.ipynb"
    assert path in REAL_MODEL
    assert plots_of(path) == ["dpo_training.png"]
    source = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    for call in ("DPO(", "evaluate.preference_accuracy(", "kerasft.save_adapter(",
                 "kerasft.load_adapter("):
        assert call in source, call
