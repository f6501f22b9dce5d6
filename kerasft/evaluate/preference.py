"""How often a model prefers the chosen response of a preference pair.

`preference_accuracy(model, batches)` scores `PreferenceBatches` (`2 * B`
rows: `B` chosen, then their `B` rejected) with whatever margin the model
defines:

- a `PreferencePolicy` (DPO, SimPO): the implicit reward margin, e.g. DPO's
  `beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))`, exactly 0
  for an adapter at its identity start;
- a `RewardScorer` (`recipes.RewardModel`): `r(chosen) - r(rejected)`;
- a plain causal LM: `log p(chosen) - log p(rejected)`, response tokens
  summed (the likelihood preference of a base model).

A pair counts 1 when its margin is > 0, 1/2 when it is exactly 0 (a tie is
chance, not a win) and 0 otherwise.
"""

import keras
import numpy as np
from keras import ops

from kerasft.evaluate._progress import Progress, no_grad


class _RowScores(keras.Model):
    """Per-row scores of a scored model, in one traced call per batch (`predict_on_batch`).

    A causal LM: `[log p(response)]`; a `RewardScorer`: `[reward]`; a
    `PreferencePolicy`: `[log pi, log ref, response tokens]`, from which
    its recipe's `pair_losses` gives the margins.
    """

    def __init__(self, model):
        super().__init__()
        self.scored = model

    def call(self, inputs):
        from kerasft.recipes.preference import reference_logits, sequence_logprobs

        x = {"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]}
        y, weights = inputs["y"], inputs["sample_weight"]
        if hasattr(self.scored, "pair_margins"):
            return self.scored(x)[:, None]
        if hasattr(self.scored, "pair_terms"):
            total, count = sequence_logprobs(self.scored(x), y, weights)
            columns = [total, count, count]
            if self.scored.recipe.needs_reference:
                columns[1] = sequence_logprobs(
                    reference_logits(self.scored.causal_lm, x), y, weights)[0]
            return ops.stack(columns, axis=-1)
        return sequence_logprobs(self.scored(x), y, weights)[0][:, None]


def _margins(model, rows):
    if hasattr(model, "pair_terms"):
        reference = (rows[:, 1], rows[:, 2]) if model.recipe.needs_reference else None
        return ops.convert_to_numpy(model.recipe.pair_losses((rows[:, 0], rows[:, 2]), reference)[1])
    half = len(rows) // 2
    return rows[:half, 0] - rows[half:, 0]


def preference_margins(model, batches, progress: bool = True) -> np.ndarray:
    """The margin of every pair in `batches`, float32 `[num_pairs]`, in batch order."""
    margins = []
    scorer = _RowScores(model)
    bar = Progress(len(batches), enabled=progress, unit_name="batch")
    with no_grad():
        for index in range(len(batches)):
            x, y, sample_weight = batches[index]
            rows = scorer.predict_on_batch({**x, "y": y, "sample_weight": sample_weight})
            margins.append(np.asarray(_margins(model, np.asarray(rows, "float32")), "float32"))
            bar.update()
    bar.finish()
    return np.concatenate(margins)


def preference_accuracy(model, batches, progress: bool = True) -> dict:
    """Preference accuracy and margin of `model` on preference pairs.

    Args:
        model: a `PreferencePolicy`, a `RewardScorer` or a causal LM (see the
            module docstring for each one's margin).
        batches: `kerasft.data.preference_batches(...)` (use `shuffle=False`
            to keep the pairs in record order).
        progress: show a progress bar.

    Returns:
        `{"accuracy", "mean_margin", "ties", "pairs"}` (`accuracy` counts a
        tie as 1/2).

    Raises:
        ValueError: for `batches` with no pair.
    """
    if len(batches) == 0:
        raise ValueError("No preference pairs to score. Received: batches with 0 batches")
    margins = preference_margins(model, batches, progress)
    wins, ties = float(np.sum(margins > 0)), int(np.sum(margins == 0))
    return {"accuracy": (wins + 0.5 * ties) / len(margins),
            "mean_margin": float(np.mean(margins)), "ties": ties, "pairs": int(len(margins))}
