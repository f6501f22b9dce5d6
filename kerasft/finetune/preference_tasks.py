"""The preference and reinforcement-learning tasks of `python -m kerasft.finetune`.

- `preference` (the `dpo`, `simpo` and `reward_model` recipes): the shipped
  WordNet preference pairs (`data.load_wordnet_preference`); held-out
  preference accuracy and mean margin on the test split, plus the response
  likelihood preference of the causal LM itself. Keys: `template`,
  `sequence_length`, `train_examples`, `eval_examples`.
- `grpo` (the `grpo` recipe): the shipped part-of-speech prompts
  (`data.load_wordnet_pos`), mean reward of greedy answers on the test
  split. Keys: `template`, `sequence_length`, `eval_examples`; training
  keys `steps`, `prompts_per_step`, `learning_rate`.
"""

from kerasft import data
from kerasft.data.preference import load_wordnet_pos, load_wordnet_preference, preference_batches
from kerasft.evaluate.preference import preference_accuracy
from kerasft.finetune.tasks import Task

PREFERENCE_METHODS = ("dpo", "simpo", "reward_model")
TASK_KEYS = {
    "preference": ["template", "sequence_length", "train_examples", "eval_examples"],
    "grpo": ["template", "sequence_length", "eval_examples"],
}
TRAINING_KEYS = {
    "preference": ["batch_size", "epochs", "learning_rate", "weight_decay?"],
    "grpo": ["steps", "prompts_per_step", "learning_rate", "weight_decay?"],
}


def implied_task(method):
    """The task a recipe method implies, or None."""
    if method in PREFERENCE_METHODS:
        return "preference"
    return "grpo" if method == "grpo" else None


class PreferenceTask(Task):
    """DPO / SimPO / reward model on WordNet pairs (own gloss vs another word's)."""

    rows = (("preference accuracy (model's margin)", "accuracy", "{:.3f}"),
            ("mean margin", "mean_margin", "{:.3f}"),
            ("likelihood preference accuracy", "likelihood_accuracy", "{:.3f}"))

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.scores_base_model = config["recipe"].get("method") != "reward_model"
        self.train = data.sample_records(load_wordnet_preference("train"),
                                         self.cfg["train_examples"], self.seed)
        self.held_out = data.sample_records(load_wordnet_preference("test"),
                                            self.cfg["eval_examples"], self.seed)

    def _batches(self, records, batch_size, shuffle):
        return preference_batches(records, self.tokenizer, template=self.cfg["template"],
                                  sequence_length=self.cfg["sequence_length"],
                                  batch_size=batch_size, shuffle=shuffle, seed=self.seed)

    def train_batches(self):
        return self._batches(self.train, self.training["batch_size"], shuffle=True)

    def fit(self, model):
        """Compiles with the recipe's own objective and fits the pairs (no token metrics)."""
        import time

        batches = self.train_batches()
        steps = len(batches) * self.training["epochs"]
        self.config["_recipe"].compile(model, learning_rate=self.training["learning_rate"],
                                       total_steps=steps,
                                       weight_decay=self.training.get("weight_decay", 0.0))
        start = time.perf_counter()
        history = model.fit(batches, epochs=self.training["epochs"], verbose=1, shuffle=False)
        seconds = time.perf_counter() - start
        logs = {key: [round(float(v), 4) for v in values]
                for key, values in history.history.items()}
        print(f"Trained {steps} optimizer steps on {batches.num_pairs} pairs in {seconds:.0f} s; "
              f"per epoch: {logs}")
        return {"optimizer_steps": steps, "pairs": batches.num_pairs,
                "sequence_length": batches.sequence_length, "train_seconds": seconds,
                "loss_per_epoch": logs["loss"], "history": logs}

    def probe_inputs(self, count=8):
        return self._batches(self.held_out[:count], count, shuffle=False)[0][0]

    def evaluate(self, model):
        batches = self._batches(self.held_out, self.training["batch_size"], shuffle=False)
        scores = preference_accuracy(model, batches, progress=False)
        causal_lm = getattr(model, "causal_lm", model)
        if hasattr(model, "pair_margins"):  # a reward model: no LM head
            likelihood = float("nan")
        elif causal_lm is model:
            likelihood = scores["accuracy"]
        else:
            likelihood = preference_accuracy(causal_lm, batches, progress=False)["accuracy"]
        return {"accuracy": scores["accuracy"], "mean_margin": scores["mean_margin"],
                "likelihood_accuracy": likelihood}

    def describe(self):
        return (f"Held-out WordNet preference pairs ({len(self.held_out)}, test split: the word's "
                "gloss vs another word's; no headword seen in training). The base model's margin "
                "is its response log-likelihood difference; a DPO policy's, its implicit reward.")


class GRPOTask(Task):
    """GRPO on WordNet part-of-speech questions (reward: the answer names the right one)."""

    rows = (("mean reward (greedy, held-out)", "mean_reward", "{:.3f}"),
            ("always-'noun' baseline", "noun_baseline", "{:.3f}"))

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.train = data.sample_records(load_wordnet_pos("train"), None, self.seed)
        self.held_out = data.sample_records(load_wordnet_pos("test"), self.cfg["eval_examples"],
                                            self.seed)

    def _recipe(self):
        recipe = self.config["_recipe"]
        if not recipe.reward_fns:
            raise ValueError("The grpo task needs `recipe.reward_fns` (e.g. [part_of_speech]). "
                             "Received: reward_fns=[]")
        return recipe

    def fit(self, model):
        """GRPO's loop: sample, score, one `fit` per step (see `GRPO.train`)."""
        recipe = self._recipe()
        recipe.compile(model, learning_rate=self.training["learning_rate"],
                       weight_decay=self.training.get("weight_decay", 0.0))
        history = recipe.train(model, self.train, steps=self.training["steps"],
                               prompts_per_step=self.training["prompts_per_step"],
                               template=self.cfg["template"])
        return {"optimizer_steps": self.training["steps"],
                "mean_reward_per_step": history["mean_reward"], "loss_per_step": history["loss"]}

    def probe_inputs(self, count=8):
        records = [{"prompt": r["prompt"], "response": r["pos"]} for r in self.held_out[:count]]
        return data.instruction_arrays(records, self.tokenizer, template=self.cfg["template"],
                                       sequence_length=self.cfg["sequence_length"],
                                       truncate="response")[0]

    def evaluate(self, model):
        recipe = self._recipe()
        if not hasattr(model, "causal_lm"):  # the base model, before the recipe
            from kerasft.recipes.grpo import GRPOPolicy

            model = GRPOPolicy(model, recipe)
        noun = sum(r["pos"] == "noun" for r in self.held_out) / len(self.held_out)
        return {"mean_reward": recipe.mean_reward(model, self.held_out, self.cfg["template"]),
                "noun_baseline": noun}

    def describe(self):
        return (f"Held-out WordNet words ({len(self.held_out)}, test split): name the part of "
                "speech in one word; reward 1 for the right one")


TASKS = {"preference": PreferenceTask, "grpo": GRPOTask}
