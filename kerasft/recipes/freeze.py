"""Freezing: only chosen blocks or layers train."""

from kerasft.models import architecture
import numpy as np

from kerasft.recipes.base import Recipe, freeze_all, mark_applied, register_recipe
from kerasft.targeting import iter_layers, path_matches


def _block_paths(model, index):
    blocks = getattr(architecture.backbone(model), "transformer_layers", None)
    if not blocks:
        raise ValueError(
            "Block indices in `trainable` need a backbone with "
            f"`transformer_layers`. Received: trainable index {index!r}"
        )
    try:
        return blocks[index].path
    except IndexError:
        raise ValueError(
            f"Block index out of range in `trainable`: the model has {len(blocks)} "
            f"blocks. Received: {index!r}"
        ) from None


def _bad_trainable(trainable):
    return ValueError(
        "`trainable` entries must be block indices (integers) or layer paths "
        f"(strings), not booleans. Received: trainable={trainable!r}"
    )


@register_recipe("freeze")
class Freeze(Recipe):
    """Freezes the model except the blocks or layers named in `trainable`.

    Args:
        trainable: entries that stay trainable: integers index decoder blocks
            (`-1` is the last block); strings are layer names, path globs
            (`"decoder_block_1*"`) or shortcuts, and select a layer with all its
            sub-layers. `"token_embedding"` and `"final_normalization"` work too.
    """

    def __init__(self, trainable=(-1,)):
        if isinstance(trainable, (bool, np.bool_)):
            raise _bad_trainable(trainable)
        if isinstance(trainable, (int, np.integer, str)):
            trainable = [trainable]
        trainable = list(trainable)
        if not trainable or not all(isinstance(t, (int, np.integer, str)) for t in trainable):
            raise ValueError(
                "`trainable` must be a non-empty list of block indices or layer "
                f"paths. Received: trainable={trainable!r}"
            )
        if any(isinstance(t, (bool, np.bool_)) for t in trainable):
            # bool is an int subclass: True would silently mean block 1.
            raise _bad_trainable(trainable)
        self.trainable = [t if isinstance(t, str) else int(t) for t in trainable]

    def apply(self, model):
        freeze_all(model)
        patterns = [
            _block_paths(model, t) if isinstance(t, int) else t for t in self.trainable
        ]
        selected = [
            layer
            for layer in iter_layers(model)
            if layer.path and any(path_matches(layer.path, p) for p in patterns)
        ]
        if not selected:
            raise ValueError(
                "No layer matches `trainable`. Received: "
                f"trainable={self.trainable!r}. Layer paths: "
                f"{sorted({l.path for l in iter_layers(model) if l.path})}"
            )
        for layer in selected:
            for variable in layer.weights:
                variable.trainable = True
        mark_applied(model, self)
        return model

    def get_config(self):
        return {"method": self.method, "trainable": list(self.trainable)}
