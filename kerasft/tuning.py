"""Hyper-parameter search with KerasTuner, each trial one run of the entry point.

    results = kerasft.tuning.search(config, space={"learning_rate": [1e-4, 3e-4],
                                    "rank": [4, 8], "targets": [["attention"], "all-linear"]},
                                    budget=6, steps=20)

Every trial is `kerasft.finetune.run` on the config with the trial's values
(in `output_dir/trials/<id>/`), a step budget (`training.max_steps`) and
validation on WordNet's validation split (`training.validation_examples`),
never on the held-out test set the run reports. The objective is the last
epoch's validation response loss (`val_response_loss`, lower is better).
KerasTuner (the `tuning` extra: `keras-tuner`) proposes the trials: a grid
over `space` in order (`algorithm="grid"`, the default) or random draws
(`"random"`). `search` writes `output_dir/results.csv`, `results.md` (sorted
by the objective) and `best_config.yaml` (the config of the best trial, a
file `python -m kerasft.finetune --config` runs).
"""

import copy
import csv
import json
import os
import pathlib
import time

OBJECTIVE = "val_response_loss"
# Keys of `space` without a section: where they go in the run config.
_TRAINING_SPACE = ("learning_rate", "weight_decay", "batch_size", "epochs")


def _config_key(name: str) -> tuple[str, str]:
    if "." in name:
        section, key = name.split(".", 1)
        return section, key
    return ("training" if name in _TRAINING_SPACE else "recipe"), name


def _encode(value):
    """KerasTuner's choices are scalars: lists (targets) travel as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _decode(value):
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def trial_config(config: dict, values: dict, output_dir, steps: int | None,
                 validation_examples: int) -> dict:
    """The run config of one trial: `config` with `values` set (see `search`)."""
    config = copy.deepcopy(config)
    for name, value in values.items():
        section, key = _config_key(name)
        config.setdefault(section, {})[key] = value
    config["output_dir"] = str(output_dir)
    config["training"].setdefault("validation_examples", validation_examples)
    if steps is not None:
        config["training"]["max_steps"] = steps
    config["show_examples"] = 0
    # Trials skip the base model's scores and held-out generation (perplexity only).
    config["_search_trial"] = True
    return config


def _check_space(space):
    if not isinstance(space, dict) or not space:
        raise ValueError(f"`space` must be a non-empty dict of lists. Received: space={space!r}")
    for name, values in space.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"Every entry of `space` must be a non-empty list of values. "
                             f"Received: {name}={values!r}")


def search(
    config: dict,
    space: dict,
    budget: int = 6,
    steps: int | None = None,
    output_dir: str | os.PathLike | None = None,
    algorithm: str = "grid",
    validation_examples: int = 32,
    seed: int | None = None,
) -> dict:
    """Runs up to `budget` trials of the entry point and writes the results table.

    Args:
        config: a validated run config (`kerasft.finetune.load_config`).
        space: `{name: [values]}`. A name is a config key `section.key`, or
            a bare key: `learning_rate`, `weight_decay`, `batch_size`,
            `epochs` go to `training`, anything else (`rank`, `alpha`,
            `targets`, `dropout`, ...) to `recipe`.
        budget: the number of trials.
        steps: the optimizer steps of every trial (`training.max_steps`);
            None keeps the config's epochs.
        output_dir: where trials and tables go (default: the config's
            `output_dir` + `/search`).
        algorithm: `"grid"` (KerasTuner's `GridSearchOracle`) or `"random"`
            (`RandomSearchOracle`).
        validation_examples: validation records when the config sets none.
        seed: the oracle's seed (default: the config's `seed`).

    Returns:
        `{"trials": [rows sorted by the objective], "best": the best row,
        "best_config": its run config, "output_dir"}`; a row is `{"trial",
        <space names>, "val_response_loss", "val_response_perplexity",
        "held_out_perplexity" (the test split's response perplexity, reported,
        never the objective), "optimizer_steps", "seconds"}`.

    Raises:
        ValueError: for an empty space or budget, an unknown algorithm, or
            when every trial failed.
    """
    import keras_tuner

    from kerasft.finetune.runner import run

    _check_space(space)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"`budget` must be a positive integer. Received: budget={budget!r}")
    if algorithm not in ("grid", "random"):
        raise ValueError(f"`algorithm` must be 'grid' or 'random'. Received: algorithm={algorithm!r}")
    root = pathlib.Path(output_dir or pathlib.Path(config["output_dir"]) / "search")
    hyperparameters = keras_tuner.HyperParameters()
    for name, values in space.items():
        hyperparameters.Choice(name, [_encode(v) for v in values], ordered=False)
    oracle_class = (keras_tuner.oracles.GridSearchOracle if algorithm == "grid"
                    else keras_tuner.oracles.RandomSearchOracle)
    oracle = oracle_class(objective=keras_tuner.Objective(OBJECTIVE, "min"), max_trials=budget,
                          hyperparameters=hyperparameters,
                          seed=config.get("seed") if seed is None else seed,
                          max_consecutive_failed_trials=budget)
    rows, configs = [], {}

    class _EntryPointTuner(keras_tuner.engine.base_tuner.BaseTuner):
        def run_trial(self, trial, *args, **kwargs):
            values = {name: _decode(trial.hyperparameters.get(name)) for name in space}
            trial_dir = root / "trials" / trial.trial_id
            run_config = trial_config(config, values, trial_dir, steps, validation_examples)
            print(f"\nTrial {trial.trial_id}: {values}")
            start = time.perf_counter()
            result = run(run_config)
            training = result["training"]
            rows.append({"trial": trial.trial_id, **values, OBJECTIVE: training[OBJECTIVE],
                         "val_response_perplexity": training["val_response_perplexity"],
                         "held_out_perplexity": result["after"]["perplexity"],
                         "optimizer_steps": training["optimizer_steps"],
                         "seconds": round(time.perf_counter() - start, 1)})
            configs[trial.trial_id] = run_config
            return {OBJECTIVE: training[OBJECTIVE]}

    tuner = _EntryPointTuner(oracle, directory=str(root), project_name="keras_tuner",
                             overwrite=True)
    tuner.search()
    if not rows:
        raise ValueError(f"Every trial failed; see the log above. Received: budget={budget}, "
                         f"space={space!r}")
    rows.sort(key=lambda row: row[OBJECTIVE])
    best = rows[0]
    _write_tables(rows, list(space), root)
    best_config = configs[best["trial"]]
    import yaml

    (root / "best_config.yaml").write_text(yaml.safe_dump(
        {k: v for k, v in best_config.items() if not k.startswith("_")}, sort_keys=False))
    print(f"\nBest of {len(rows)} trials: {best}; config in {root / 'best_config.yaml'}")
    return {"trials": rows, "best": best, "best_config": best_config, "output_dir": root}


def _write_tables(rows, names, root):
    columns = ["trial", *names, OBJECTIVE, "val_response_perplexity", "held_out_perplexity",
               "optimizer_steps", "seconds"]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(row[k]) if isinstance(row[k], (list, dict)) else row[k]
                             for k in columns})
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[k]:.4f}" if k in (OBJECTIVE, "val_response_perplexity", "held_out_perplexity")
                 else json.dumps(row[k]) if isinstance(row[k], (list, dict)) else str(row[k])
                 for k in columns]
        lines.append("| " + " | ".join(cells) + " |")
    (root / "results.md").write_text("\n".join(lines) + "\n")
