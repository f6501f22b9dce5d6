"""The `kerasft` command line: `train`, `eval`, `export` and `chat` over the same run configs.

    kerasft train --config sft_lora --set model.name=tiny
    kerasft eval --config sft_lora --adapter runs/sft_lora/adapter
    kerasft export ...    # kerasft.export.main(argv)
    kerasft chat ...      # kerasft.chat.main(argv)

`--config` takes a file or the name of a shipped config (`recipes/configs/`,
also inside an installed wheel). `kerasft --config X` and
`python -m kerasft.finetune --config X` (no sub-command) still mean `train`.
Native TensorFlow / absl log lines are kept off the console unless
`--verbose` (or `KERASFT_VERBOSE=1`) is given (`kerasft.quiet`).
"""

import argparse
import importlib
import json
import os
import pathlib
import sys
import textwrap
import time
from typing import Sequence

from kerasft import quiet

COMMANDS = ("train", "eval", "export", "chat")

DESCRIPTION = """\
Fine-tune and use Gemma-style keras-hub models from one config file.

commands:
  train    apply the config's recipe, fit, score before/after on held-out data,
           save the adapter and metrics.json under output_dir (the default)
  eval     score a saved adapter on the config's held-out data (the same
           metrics train reports; --base also scores the base model)
  export   write a trained model for serving engines (kerasft.export)
  chat     talk to a model with a saved adapter (kerasft.chat)

`kerasft COMMAND --help` describes each one. A config is a YAML or JSON file,
or the name of a shipped one:
{configs}
"""


def _shipped_names() -> str:
    from kerasft.shipped import shipped_dir

    try:
        names = sorted(p.stem for p in shipped_dir("recipes/configs").glob("*.yaml"))
        return textwrap.fill(", ".join(names), width=78, initial_indent="  ",
                             subsequent_indent="  ")
    except FileNotFoundError:
        return "(none found)"


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="a YAML or JSON run config, or a shipped config's name (sft_lora)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (YAML syntax), e.g. --set training.epochs=2")
    _add_verbose(parser)


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow / absl log lines and framework warnings "
                             "(also KERASFT_VERBOSE=1)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kerasft", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION.format(configs=_shipped_names()),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = commands.add_parser(
        "train", help="fit the config's recipe and report before/after (the default)",
        description="Loads the model and the data of the config's task, scores the base model, "
                    "applies the recipe, fits it, scores again, and saves the adapter and "
                    "metrics.json under output_dir.",
    )
    _add_config_arguments(train)
    evaluate = commands.add_parser(
        "eval", help="score a saved adapter on the config's held-out data",
        description="Loads the config's base model, loads a saved adapter onto it and scores it "
                    "on the config's held-out data (the metrics `train` reports).",
    )
    _add_config_arguments(evaluate)
    evaluate.add_argument("--adapter", default=None,
                          help="the adapter directory (default: <output_dir>/adapter)")
    evaluate.add_argument("--base", action="store_true",
                          help="also score the base model, for a before/after table")
    evaluate.add_argument("--output", default=None,
                          help="write the scores as JSON here (default: <adapter>/eval.json)")
    for name, module in (("export", "kerasft.export"), ("chat", "kerasft.chat")):
        command = commands.add_parser(
            name, add_help=False, help=f"{module}.main (its own options: kerasft {name} --help)")
        command.set_defaults(module=module)
    return parser


def _legacy(argv: list) -> bool:
    """`kerasft --config X` (no sub-command), as before sub-commands existed."""
    first = next((a for a in argv if a != "--verbose"), None)
    return first is not None and first not in COMMANDS and first.startswith("--config")


def main(argv: Sequence[str] | None = None):
    """Parses the command line and runs one command.

    Args:
        argv: the arguments (without the program name); None reads `sys.argv`.

    Returns:
        `train`: the run's result (`kerasft.finetune.run`); `eval`: the
        scores dict; `export` / `chat`: what their `main` returns.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if _legacy(argv):
        argv = ["train", *argv]
    if argv[:1] in (["export"], ["chat"]):
        return _dispatch(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return None
    if args.verbose:
        os.environ["KERASFT_VERBOSE"] = "1"
    quiet.quiet_python_logs()
    from kerasft.finetune import runner
    from kerasft.shipped import shipped_config

    try:
        path = shipped_config(args.config)
    except FileNotFoundError as error:
        raise SystemExit(f"kerasft {args.command}: {error}") from None
    config = runner.load_config(path, args.set)
    if args.command == "train":
        return runner.run(config)
    return evaluate_adapter(config, args.adapter, base=args.base, output=args.output)


def _dispatch(command: str, argv: list):
    """Hands the rest of the command line to `kerasft.<command>.main(argv)`."""
    name = f"kerasft.{command}"
    try:
        module = importlib.import_module(name)
        entry = module.main
    except (ImportError, AttributeError) as error:
        raise SystemExit(
            f"kerasft {command}: this installation has no `{name}.main` ({error}). "
            "It comes with a newer kerasft; `kerasft train` and `kerasft eval` work."
        ) from None
    quiet.quiet_python_logs()
    return entry(argv)


def evaluate_adapter(config: dict, adapter=None, base: bool = False, output=None) -> dict:
    """Scores a saved adapter on a run config's held-out data.

    Args:
        config: a validated run config (`kerasft.finetune.load_config`).
        adapter: the adapter directory; None: `<output_dir>/adapter`.
        base: also score the base model and print a before/after table.
        output: where to write the scores as JSON; None:
            `<adapter>/eval.json`.

    Returns:
        `{"adapter", "before", "after"}`: the directory and the scores
        (floats; `before` is None unless `base`).

    Raises:
        FileNotFoundError: when the adapter directory does not exist.
    """
    import keras

    from kerasft.adapters import load_adapter
    from kerasft.finetune import runner, tasks

    adapter = pathlib.Path(adapter or pathlib.Path(config["output_dir"]) / "adapter")
    if not adapter.is_dir():
        raise FileNotFoundError(
            f"No adapter directory at {str(adapter)!r} (train one with `kerasft train` or pass "
            f"--adapter). Received: adapter={str(adapter)!r}"
        )
    keras.utils.set_random_seed(config["seed"])  # the tiny random model is the trained one
    start = time.perf_counter()
    model = runner._load_model(config)
    print(f"Loaded {(config.get('model') or {}).get('name', 'gemma3-270m')} "
          f"in {time.perf_counter() - start:.0f} s")
    task = tasks.make_task(config, model.preprocessor.tokenizer)
    before = runner._scores(task, model) if base and task.scores_base_model else None
    model = load_adapter(model, adapter)
    after = runner._scores(task, model)
    runner._print_report(task, before, after, config)
    result = {"adapter": str(adapter), "before": runner._numbers(before),
              "after": runner._numbers(after)}
    output = pathlib.Path(output or adapter / "eval.json")
    output.write_text(json.dumps(result, indent=2))
    print(f"\nScores written to {output}")
    return result


def cli() -> None:
    """The `kerasft` console script and `python -m kerasft.finetune`: native log lines filtered."""
    _check_backend()  # before the filter: an exec'd process must not write into its pipe
    with quiet.filtered_native_stderr():
        main()


def _check_backend():
    """Re-runs the command under JAX when Keras is set to a backend kerasft does not support."""
    import keras

    if keras.backend.backend() in ("jax", "torch") or os.environ.get("KERAS_BACKEND"):
        return
    print(f"kerasft runs on JAX or PyTorch; Keras is set to {keras.backend.backend()!r} "
          "(keras.json). Running with KERAS_BACKEND=jax.", file=sys.stderr)
    os.environ["KERAS_BACKEND"] = "jax"
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "kerasft.finetune", *sys.argv[1:]])
