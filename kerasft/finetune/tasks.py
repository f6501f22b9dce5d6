"""What a run trains on and how it is scored: instruction tuning, text, classification.

A task reads its `data:` section, builds the training input from the
model's tokenizer and scores a model on held-out data it never trains on:

- `instruction` (WordNet definitions by default): loss on the response
  tokens only; held-out response perplexity and greedy-generation scores.
  Keys: `template`, `sequence_length`, `train_examples`, `eval_examples?`,
  `generation_max_length?`, `generation_batch_size?`,
  `calibration_examples?` (training examples whose activations calibrate a
  quantized base, for recipes whose `apply` takes `calibration_data`),
  `pack?` (true: several training examples per row, each attending only to
  itself, `kerasft.data.instruction_batches(pack=True)`; held-out scoring,
  validation and calibration stay one example per row).
- `text` (Shakespeare, continued pre-training): packed rows of plain text;
  held-out perplexity on the start of Macbeth and The Comedy of Errors.
  Keys: `sequence_length`, `eval_characters`.
- `classification` (tweet sentiment, for the `classifier` recipe):
  accuracy and macro F1 on a class-balanced held-out sample. Keys:
  `sequence_length`, `train_examples`, `eval_split`, `eval_examples`.

Training and held-out records are seeded samples of their whole split
(`kerasft.data.sample_records`): the shipped splits are sorted.
"""

from typing import Any

import numpy as np

from kerasft import data, evaluate
from kerasft.finetune.extras import EXTRA_TRAINING_KEYS

TASK_KEYS = {
    "instruction": ["template", "sequence_length", "train_examples", "eval_examples?",
                    "generation_max_length?", "generation_batch_size?", "calibration_examples?",
                    "replay_fraction?", "pack?"],
    "text": ["sequence_length", "eval_characters"],
    "classification": ["sequence_length", "train_examples", "eval_split", "eval_examples"],
}

_TRAINING = ["batch_size", "epochs", "learning_rate", "weight_decay?", "checkpoint?"]
TRAINING_KEYS = {
    # Validation, early stopping, history, max_steps, forgetting, init_from: `kerasft.finetune.extras`.
    "instruction": [*_TRAINING, "gradient_accumulation_steps?", *EXTRA_TRAINING_KEYS],
    "text": [*_TRAINING, "gradient_accumulation_steps?", "max_train_rows?"],
    # Arrays fit with Keras's own per-example loss: no token-normalised accumulation.
    "classification": _TRAINING,
}


def task_name(config: dict) -> str:
    """`data.task`, or the task the recipe implies (`classification` for a classifier)."""
    name = config["data"].get("task")
    if name is None:
        name = _preference.implied_task(config["recipe"].get("method"))
    if name is None:
        name = "classification" if config["recipe"].get("method") == "classifier" else "instruction"
    if name not in TASK_KEYS:
        raise ValueError(f"`data.task` must be one of {sorted(TASK_KEYS)}. Received: task={name!r}")
    return name


def make_task(config: dict, tokenizer) -> "Task":
    """The task of a run config, with its data loaded and tokenised."""
    return {"instruction": InstructionTask, "text": TextTask,
            "classification": ClassificationTask, **_preference.TASKS}[task_name(config)](
                config, tokenizer)


class Task:
    """The data of a run and its held-out evaluation.

    Attributes:
        rows: `(label, key, format)` of the metrics table.
        scores_base_model: whether the model can be scored before the recipe
            is applied (not for a classifier, whose head does not exist yet).
        token_batches: whether the training input is token-id batches (fed
            inside `kerasft.pretokenized`) rather than a plain model's arrays.
    """

    rows: tuple = ()
    scores_base_model = True
    token_batches = True

    def __init__(self, config: dict, tokenizer):
        self.config = config
        self.cfg = config["data"]
        self.training = config["training"]
        self.seed = config["seed"]
        self.tokenizer = tokenizer

    def train_batches(self):
        """The training input: a `SequenceBatches` (or `(x, y)` arrays)."""
        raise NotImplementedError

    def calibration_data(self):
        """Calibration batches for a quantized base, or None."""
        return None

    def validation_batches(self, count: int):
        """Batches of `count` validation records (`training.validation_examples`)."""
        raise ValueError(f"`training.validation_examples` is supported by the instruction task "
                         f"only. Received: validation_examples={count!r}")

    def evaluate(self, model) -> dict:
        """Held-out scores (floats), plus `outputs` where the task generates text."""
        raise NotImplementedError

    def probe_inputs(self, count: int = 8) -> dict:
        """Model inputs of the first `count` held-out rows (for reload and merge checks)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line saying what was trained on and scored."""
        return ""


class InstructionTask(Task):
    """Instruction tuning on WordNet definitions ("Define the word X." -> gloss)."""

    rows = (("perplexity (response tokens)", "perplexity", "{:.2f}"),
            ("exact match", "exact_match", "{:.3f}"), ("token F1", "token_f1", "{:.3f}"),
            ("BLEU", "bleu", "{:.3f}"), ("ROUGE-1", "rouge_1", "{:.3f}"),
            ("ROUGE-2", "rouge_2", "{:.3f}"), ("ROUGE-L", "rouge_l", "{:.3f}"))

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.train = data.sample_records(data.load_wordnet("train"), self.cfg["train_examples"],
                                         self.seed)
        self.held_out = data.sample_records(data.load_wordnet("test"),
                                            self.cfg.get("eval_examples", 48), self.seed)

    def _batches(self, records, batch_size, shuffle, pack=False):
        return data.instruction_batches(
            records, self.tokenizer, template=self.cfg["template"],
            sequence_length=self.cfg["sequence_length"], batch_size=batch_size,
            shuffle=shuffle, seed=self.seed, truncate="response", pack=pack,
        )

    def train_batches(self):
        batches = self._batches(self.train, self.training["batch_size"], shuffle=True,
                                pack=self.cfg.get("pack", False))
        if self.cfg.get("replay_fraction"):  # mix in general text (kerasft.data.general_text)
            from kerasft.data.general_text import with_replay

            batches = with_replay(batches, self.tokenizer, self.cfg["replay_fraction"], seed=self.seed)
        return batches

    def validation_batches(self, count):
        # WordNet's validation split: no word of it is trained on or in the test split.
        records = data.sample_records(data.load_wordnet("validation"), count, self.seed)
        return self._batches(records, self.training["batch_size"], shuffle=False)

    def probe_inputs(self, count=8):
        return self._batches(self.held_out[:count], count, shuffle=False)[0][0]

    def calibration_data(self):
        count = self.cfg.get("calibration_examples")
        # A prefix of the (randomly ordered) sample is itself a uniform sample.
        return self._batches(self.train[:count], 16, shuffle=False) if count else None

    def evaluate(self, model):
        scores = evaluate.perplexity(
            model, self._batches(self.held_out, self.training["batch_size"], shuffle=False),
            progress=False,
        )
        if self.config.get("_search_trial"):  # kerasft.tuning: held-out perplexity only
            return {"perplexity": scores["perplexity"]}
        template = data.get_template(self.cfg["template"])
        generations = evaluate.generate_and_score(
            model, [template.render_prompt(r["prompt"]) for r in self.held_out],
            [r["response"] for r in self.held_out],
            max_length=self.cfg.get("generation_max_length", 64),
            batch_size=self.cfg.get("generation_batch_size", 16),
        )
        return {"perplexity": scores["perplexity"],
                **{key: generations[key] for _, key, _ in self.rows[1:]},
                "outputs": generations["outputs"]}

    def describe(self):
        return (f"Held-out WordNet words ({len(self.held_out)}, a seeded sample of the test "
                f"split; no word seen in training)")

    def examples(self, before, after, count):
        """`(prompt, reference, before, after)` of the first `count` held-out words."""
        old = before["outputs"] if before else [""] * len(self.held_out)
        return [(r["prompt"], r["response"], o, n)
                for r, o, n in list(zip(self.held_out, old, after["outputs"]))[:count]]


class TextTask(Task):
    """Continued pre-training on Shakespeare's plays (packed rows of plain text)."""

    rows = (("Macbeth perplexity", "macbeth", "{:.2f}"),
            ("The Comedy of Errors perplexity", "comedy_of_errors", "{:.2f}"))

    def train_batches(self):
        batches = data.packed_text_batches(
            data.load_shakespeare("train"), self.tokenizer,
            sequence_length=self.cfg["sequence_length"],
            batch_size=self.training["batch_size"], seed=self.seed,
        )
        # The packed rows follow the plays in order: train on a seeded sample of them.
        keep = data.sample_records(range(batches.num_examples),
                                   self.training.get("max_train_rows"), self.seed)
        return batches.select(keep)

    def _held_out_batches(self, split, batch_size):
        text = data.load_shakespeare(split)[0][: self.cfg["eval_characters"]]
        # One document: whole-row attention is already per document, and the
        # probe rows (reload / merge checks) then hold only what every model reads.
        return data.packed_text_batches(
            [text], self.tokenizer, sequence_length=self.cfg["sequence_length"],
            batch_size=batch_size, shuffle=False, cross_attention=True,
        )

    def evaluate(self, model):
        scores = {}
        for split, key in (("validation", "macbeth"), ("test", "comedy_of_errors")):
            batches = self._held_out_batches(split, self.training["batch_size"])
            scores[key] = evaluate.perplexity(model, batches, progress=False)["perplexity"]
        return scores

    def probe_inputs(self, count=8):
        return self._held_out_batches("validation", count)[0][0]

    def describe(self):
        return (f"Held-out plays (the first {self.cfg['eval_characters']:,} characters of each; "
                "neither is in the training split)")


def balanced_sample(records: list, size: int, seed: int) -> list:
    """A seeded sample of `size` records with the split's class balance, in split order."""
    if size >= len(records):
        return list(records)
    rng = np.random.default_rng(seed)
    labels = np.array([r["label"] for r in records])
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.extend(rng.choice(members, round(size * len(members) / len(records)), replace=False))
    return [records[i] for i in sorted(chosen)]


class ClassificationTask(Task):
    """Tweet sentiment (negative / neutral / positive) with a `Classifier` head."""

    rows = (("accuracy", "accuracy", "{:.4f}"), ("macro F1", "macro_f1", "{:.4f}"),
            ("majority-class accuracy", "majority_class_accuracy", "{:.4f}"))
    scores_base_model = False
    token_batches = False

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        records = [balanced_sample(data.load_tweets_sentiment(split), size, self.seed)
                   for split, size in (("train", self.cfg["train_examples"]),
                                       (self.cfg["eval_split"], self.cfg["eval_examples"]))]
        self.train, self.held_out = (
            data.text_classification_arrays(r, tokenizer, self.cfg["sequence_length"])
            for r in records
        )

    def train_batches(self):
        return self.train

    def probe_inputs(self, count=8):
        return {key: value[:count] for key, value in self.held_out[0].items()}

    def evaluate(self, model):
        x, y = self.held_out
        probabilities = model.predict(x, batch_size=2 * self.training["batch_size"], verbose=0)
        num_classes = int(np.shape(probabilities)[-1])
        majority = np.bincount(self.train[1]).argmax()
        return {"accuracy": evaluate.accuracy(y, probabilities),
                "macro_f1": evaluate.macro_f1(y, probabilities, num_classes=num_classes),
                "majority_class_accuracy": float(np.mean(y == majority))}

    def describe(self):
        return (f"Held-out tweets ({self.cfg['eval_split']} split, {len(self.held_out[1])} rows, "
                f"classes {list(data.TWEETS_SENTIMENT_CLASS_NAMES)})")


def describe_rows(task: Task, before: Any, after: dict) -> list:
    """`(label, before text, after text)` rows of the metrics table."""
    rows = []
    for label, key, fmt in task.rows:
        if key not in after:  # e.g. a search trial's perplexity-only scores
            continue
        old = "-" if before is None else fmt.format(before[key])
        rows.append((label, old, fmt.format(after[key])))
    return rows


# Preference and RL tasks (DPO, SimPO, reward model, GRPO): kerasft/finetune/preference_tasks.py.
from kerasft.finetune import preference_tasks as _preference  # noqa: E402

TASK_KEYS.update(_preference.TASK_KEYS)
TRAINING_KEYS.update(_preference.TRAINING_KEYS)
