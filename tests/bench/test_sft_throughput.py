"""bench/sft_throughput.py end to end on a tiny shape: every system runs and the table is whole."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

SCRIPT = pathlib.Path(__file__).parents[2] / "bench" / "sft_throughput.py"


# Four subprocesses that each import TensorFlow, Keras, JAX or torch: ~1 min
# on an idle 2-core machine, 9 min on a contended one.
@pytest.mark.slow
def test_quick_run_prints_every_row_with_its_ratios(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--steps", "2", "--warmup-steps", "1",
         "--epoch", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    systems = ("kerasft-jax", "kerasft-torch", "keras-hub-jax", "peft-torch")
    for system in systems:
        row = re.search(rf"^\| {system} +\|(.*)$", table, re.M)
        assert row, f"no row for {system}:\n{table}"
        cells = [c.strip() for c in row.group(1).split("|") if c.strip()]
        assert len(cells) == 8, cells
    for system in ("kerasft-jax", "peft-torch"):
        assert re.search(rf"^\| epoch {system} +\| \d+ rows x \d+ \| \d+ steps", table, re.M), table
    results = json.loads(out.read_text())["results"]
    assert set(results) == set(systems)
    # Identical batches: every system trained on the same tokens, same rank and targets.
    trained = {s: r["weighted_tokens_per_second"] * sum(r["step_seconds"]) for s, r in results.items()}
    assert max(trained.values()) - min(trained.values()) < 1e-3 * max(trained.values()), trained
    # The same LoRA (rank, targets, A/B shapes) in kerasft on both backends and in
    # PEFT; keras-hub's EinsumDense LoRA factors the kernels differently
    # (per-head A, shared B), so its count differs.
    trainable = {s: r["trainable_parameters"] for s, r in results.items()}
    assert trainable["kerasft-jax"] == trainable["kerasft-torch"] == trainable["peft-torch"], trainable
    # The ratio columns are the step times divided by PEFT's and keras-hub's.
    peft, hub = (results[s]["seconds_per_step"] for s in ("peft-torch", "keras-hub-jax"))
    # Cells after the name: s/step, weighted tok/s, real tok/s, peak mem, fit tail, x PEFT, x keras-hub.
    row = re.search(r"^\| kerasft-jax +\|(.*)$", table, re.M).group(1).split("|")
    assert float(row[5]) == pytest.approx(results["kerasft-jax"]["seconds_per_step"] / peft, abs=0.01)
    assert float(row[6]) == pytest.approx(results["kerasft-jax"]["seconds_per_step"] / hub, abs=0.01)
    # Each epoch trains on every example once: PEFT padded rows, kerasft packed ones.
    epochs = {s: results[s]["epoch"] for s in ("kerasft-jax", "peft-torch")}
    assert epochs["kerasft-jax"]["rows"] < epochs["peft-torch"]["rows"]
