"""The `kerasft` command line: sub-commands, shipped config names, quiet start-up."""

import json
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

from kerasft import quiet
from kerasft.finetune import cli

ROOT = pathlib.Path(__file__).parents[1]

# What a newcomer must not see on the first screen: TensorFlow / absl / oneDNN /
# CUDA start-up lines and pip's output.
NOISE = re.compile(
    r"absl|oneDNN|cuda|cuInit|tensorflow|cpu_feature_guard|normalizer\.cc|"
    r"^[IWEF]\d{4} |Requirement already|pip install|setuptools",
    re.IGNORECASE | re.MULTILINE,
)

TINY = ["model.name=tiny", "model.dtype=null", "training.epochs=1", "training.batch_size=4",
        "data.train_examples=8", "data.eval_examples=4", "data.generation_max_length=24",
        "data.sequence_length=24", "show_examples=0"]


def _sets(values):
    return [arg for value in values for arg in ("--set", value)]


def _environment():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("TF_CPP_MIN_LOG_LEVEL", "KERASFT_VERBOSE"):  # the defaults a newcomer has
        env.pop(name, None)
    env.setdefault("KERAS_BACKEND", "jax")
    return env


def test_help_names_every_command_and_the_shipped_configs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert re.search(rf"^  {command} ", text, re.MULTILINE), command
    shipped = sorted(p.stem for p in (ROOT / "recipes" / "configs").glob("*.yaml"))
    assert shipped and all(name in text for name in shipped)


@pytest.mark.parametrize("argv, expected", [
    (["--config", "x.yaml"], True), (["--verbose", "--config", "x.yaml"], True),
    (["--config=x.yaml"], True), (["train", "--config", "x.yaml"], False),
    (["eval", "--config", "x.yaml"], False), ([], False), (["--help"], False),
])
def test_no_sub_command_means_train(argv, expected):
    assert cli._legacy(argv) is expected


def test_a_config_name_resolves_to_the_shipped_file(tmp_path):
    from kerasft.shipped import shipped_config

    assert shipped_config("sft_lora") == ROOT / "recipes" / "configs" / "sft_lora.yaml"
    assert shipped_config("qlora.yaml") == ROOT / "recipes" / "configs" / "qlora.yaml"
    own = tmp_path / "sft_lora.yaml"  # a file wins over the shipped name
    own.write_text("seed: 1\n")
    assert shipped_config(str(own)) == own
    with pytest.raises(FileNotFoundError, match=r"shipped: .*sft_lora.*Received: config='nope'"):
        shipped_config("nope")


def test_unknown_config_name_exits_with_the_shipped_names():
    with pytest.raises(SystemExit, match=r"kerasft train: .*sft_lora.*config='no_such'"):
        cli.main(["train", "--config", "no_such"])


def test_export_and_chat_hand_the_rest_of_the_line_to_their_main(monkeypatch):
    seen = {}
    for name in ("export", "chat"):
        module = types.ModuleType(f"kerasft.{name}")
        module.main = lambda argv, name=name: seen.setdefault(name, list(argv)) and len(argv)
        monkeypatch.setitem(sys.modules, f"kerasft.{name}", module)
    assert cli.main(["export", "--adapter", "a", "--format", "gguf"]) == 4
    assert cli.main(["chat", "--config", "sft_lora", "--help"]) == 3
    assert seen == {"export": ["--adapter", "a", "--format", "gguf"],
                    "chat": ["--config", "sft_lora", "--help"]}


def test_a_missing_export_module_is_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "kerasft.chat", None)  # import raises ImportError
    with pytest.raises(SystemExit, match=r"kerasft chat: this installation has no "
                                         r"`kerasft.chat.main`"):
        cli.main(["chat"])


def test_native_log_lines_are_filtered_and_the_rest_passes(capfd):
    with quiet.filtered_native_stderr():
        for line in (b"WARNING: All log messages before absl::InitializeLog() is called are "
                     b"written to STDERR\n",
                     b"I0000 00:00:1796134542.413128   27278 port.cc:153] oneDNN custom ops\n",
                     b"E0000 00:00:1796134586.634092   27480 cuda_platform.cc:52] cuInit\n",
                     b"normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty.\n",
                     b"Traceback (most recent call last):\n", b"ValueError: kept\n"):
            os.write(2, line)
    assert capfd.readouterr().err == "Traceback (most recent call last):\nValueError: kept\n"


def test_verbose_keeps_every_line(capfd, monkeypatch):
    monkeypatch.setenv("KERASFT_VERBOSE", "1")
    with quiet.filtered_native_stderr():
        os.write(2, b"I0000 00:00:1.2   7 port.cc:153] oneDNN\n")
    assert "port.cc:153" in capfd.readouterr().err


def test_help_starts_quietly_in_a_fresh_process():
    # `import kerasft` imports TensorFlow (through keras-hub): its start-up
    # lines are the first thing a newcomer would see.
    result = subprocess.run(
        [sys.executable, "-m", "kerasft.finetune", "--help"], cwd=ROOT, env=_environment(),
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout
    output = result.stdout + result.stderr
    assert not NOISE.findall(output), output


def test_verbose_shows_the_native_lines_again():
    result = subprocess.run(
        [sys.executable, "-m", "kerasft.finetune", "--help", "--verbose"], cwd=ROOT,
        env=_environment(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert NOISE.search(result.stderr), result.stderr  # this TensorFlow prints them


def test_eval_scores_the_saved_adapter_as_train_did(tmp_path):
    overrides = [*TINY, f"output_dir={tmp_path / 'run'}", "training.learning_rate=0.01"]
    trained = cli.main(["train", "--config", "sft_lora", *_sets(overrides)])
    scored = cli.main(["eval", "--config", "sft_lora", *_sets(overrides), "--base"])
    # The same seed rebuilds the same tiny base; the adapter reloads exactly.
    assert scored["after"]["perplexity"] == pytest.approx(trained["after"]["perplexity"],
                                                          rel=1e-5)
    assert scored["before"]["perplexity"] == pytest.approx(trained["before"]["perplexity"],
                                                           rel=1e-5)
    assert scored["after"]["perplexity"] != pytest.approx(scored["before"]["perplexity"])
    saved = json.loads((tmp_path / "run" / "adapter" / "eval.json").read_text())
    assert saved["after"] == scored["after"]
    with pytest.raises(FileNotFoundError, match="Received: adapter="):
        cli.main(["eval", "--config", "sft_lora", *_sets(overrides),
                  "--adapter", str(tmp_path / "none")])


@pytest.mark.slow
def test_the_main_job_first_screen_has_no_pip_tensorflow_or_absl_line(tmp_path):
    # The console script as a newcomer runs it, on the tiny model: everything
    # printed before training starts is kerasft's own.
    overrides = [*TINY, f"output_dir={tmp_path / 'run'}"]
    result = subprocess.run(
        [sys.executable, "-m", "kerasft.finetune", "train", "--config", "sft_lora",
         *_sets(overrides)], cwd=tmp_path, env=_environment(), capture_output=True, text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Loaded tiny" in result.stdout and "Adapter saved to" in result.stdout
    assert not NOISE.findall(output), output
