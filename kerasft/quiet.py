"""Quiet start-up: TensorFlow's native log lines kept off the console unless asked for.

keras-hub imports TensorFlow (through tensorflow-text) for its tokenizers, and
TensorFlow 2.21 writes its oneDNN / CUDA / CPU-feature lines from C++ before
its logging is set up, so `TF_CPP_MIN_LOG_LEVEL` does not reach them; later
C++ lines (a failed `cuInit`, SentencePiece's `normalizer.cc` note) are
written straight to file descriptor 2. So:

- `quiet_startup()` (run by `import kerasft`, before anything imports
  TensorFlow) sets `TF_CPP_MIN_LOG_LEVEL=3` unless it is set, and imports
  TensorFlow with the native stderr pointed at /dev/null for the import only.
- `filtered_native_stderr()` (the `kerasft` command line) drops native log
  lines from file descriptor 2 for a whole run and passes every other line on.
- `quiet_python_logs()` (the command line) lowers absl's Python logging to
  errors and hides TensorFlow / Keras deprecation warnings.

`KERASFT_VERBOSE=1` (or `--verbose` on the command line) turns all of it off.
"""

import contextlib
import importlib.util
import os
import re
import sys
import threading
import warnings

# A native log line: absl/glog (`I0000 00:00:... 123 port.cc:153] ...`), the
# line absl writes before it is initialised, TensorFlow's CPU-feature note and
# SentencePiece's own logger.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w./-]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
    rb"|[\w./-]+\.cc\(\d+\) LOG\((?:INFO|WARNING)\))"
)


def verbose_requested() -> bool:
    """Whether the user asked for every log line (`KERASFT_VERBOSE` or `--verbose`).

    The command-line switch is read from `sys.argv` because TensorFlow is
    imported by `import kerasft`, before the command line is parsed.
    """
    value = os.environ.get("KERASFT_VERBOSE", "").strip().lower()
    return value not in ("", "0", "false", "no") or "--verbose" in sys.argv[1:]


@contextlib.contextmanager
def native_stderr_silenced():
    """Points file descriptor 2 at /dev/null inside the block (Python errors still raise)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_startup() -> None:
    """Sets `TF_CPP_MIN_LOG_LEVEL` and imports TensorFlow without its start-up lines.

    Does nothing when verbose output was asked for, when TensorFlow is not
    installed, or when it is already imported.
    """
    if verbose_requested():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    with native_stderr_silenced():
        import tensorflow  # noqa: F401


def quiet_python_logs() -> None:
    """absl's Python logging at ERROR, and framework deprecation warnings hidden."""
    if verbose_requested():
        return
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    for module in ("tensorflow", "tensorflow_text", "keras", "keras_hub", "absl", "jax", "torch"):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)


@contextlib.contextmanager
def filtered_native_stderr():
    """Drops native log lines (`NATIVE_LOG_LINE`) written to fd 2 inside the block.

    Every other line (Python tracebacks, warnings, progress) goes on to the
    original stderr. Does nothing when verbose output was asked for.
    """
    if verbose_requested():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not NATIVE_LOG_LINE.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, name="kerasft-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread sees EOF
        thread.join(timeout=5)
        os.close(saved)
