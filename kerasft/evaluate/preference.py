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

import numpy as np
from keras import ops

from kerasft.evaluate._progress import Progress, no_grad


def _margins(model, x, y, sample_weight):
    if hasattr(model, "pair_margins"):
        return model.pair_margins(x, y, sample_weight)
    if hasattr(model, "pair_terms"):
        return model.pair_terms(x, y, model(x), sample_weight)[1]
    from kerasft.data.preference import split_pairs
    from kerasft.recipes.preference import sequence_logprobs

    total, _ = sequence_logprobs(model(x), y, sample_weight)
    chosen, rejected = split_pairs(total)
    return chosen - rejected


def preference_margins(model, batches, progress: bool = True) -> np.ndarray:
    """The margin of every pair in `batches`, float32 `[num_pairs]`, in batch order."""
    margins = []
    bar = Progress(len(batches), enabled=progress, unit_name="batch")
    with no_grad():
        for index in range(len(batches)):
            x, y, sample_weight = batches[index]
            margins.append(np.asarray(
                ops.convert_to_numpy(_margins(model, x, y, sample_weight)), "float32"))
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
