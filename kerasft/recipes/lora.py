"""LoRA, rsLoRA: low-rank adapters on chosen dense layers of a frozen model."""

import fnmatch

from kerasft.layers.lora import LoRADense, validate_lora_arguments
from kerasft.recipes.base import Recipe, freeze_all, mark_applied, register_recipe
from kerasft.targeting import (
    find_target_layers,
    iter_layers,
    normalize_targets,
    path_matches,
    refresh_after_surgery,
    replace_layer,
)


def lora_layers(model):
    """Every `LoRADense` in `model`, in model order."""
    return [layer for layer in iter_layers(model) if isinstance(layer, LoRADense)]


@register_recipe("lora")
class LoRA(Recipe):
    """Low-rank adaptation of the targeted dense layers; everything else frozen.

    Args:
        rank: rank of each update.
        alpha: scaling numerator; the update is scaled by `alpha / rank`
            (`alpha / sqrt(rank)` with `use_rslora=True`).
        dropout: dropout on the adapter input, in [0, 1).
        targets: layer names, path globs or shortcuts (`"attention"`,
            `"mlp"`, `"all-linear"`); see `kerasft.targeting`.
        use_rslora: rank-stabilised scaling.
        rank_pattern: optional `{glob_or_name: rank}` overriding `rank` for
            matching layer paths (first match wins).
    """

    def __init__(
        self,
        rank=8,
        alpha=16.0,
        dropout=0.0,
        targets=("query", "value"),
        use_rslora=False,
        rank_pattern=None,
    ):
        validate_lora_arguments(rank, alpha, dropout)
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.targets = normalize_targets(targets)
        self.use_rslora = bool(use_rslora)
        self.rank_pattern = dict(rank_pattern or {})
        for pattern, pattern_rank in self.rank_pattern.items():
            validate_lora_arguments(pattern_rank, alpha, dropout)

    def rank_for(self, path):
        for pattern, pattern_rank in self.rank_pattern.items():
            if path_matches(path, pattern) or fnmatch.fnmatchcase(path, pattern):
                return pattern_rank
        return self.rank

    def apply(self, model):
        already = [
            w.target_path
            for w in lora_layers(model)
            if any(path_matches(w.target_path, t) for t in self.targets)
        ]
        if already:
            raise ValueError(
                "These layers already carry a LoRA adapter; merge or remove it "
                f"first. Received: targets={list(self.targets)!r} matching {already}"
            )
        targets = find_target_layers(model, self.targets)
        freeze_all(model)
        for path, layer in targets.items():
            wrapper = LoRADense(
                layer,
                rank=self.rank_for(path),
                alpha=self.alpha,
                dropout=self.dropout,
                use_rslora=self.use_rslora,
                target_path=path,
            )
            # Variables are created now (not at the first call) so that a jitted
            # train step sees them, under the wrapped layer's parent path.
            wrapper._parent_path = path.rpartition("/")[0]
            wrapper.build()
            replace_layer(model, layer, wrapper)
        refresh_after_surgery(model)
        mark_applied(model, self)
        return model

    def get_config(self):
        return {
            "method": self.method,
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "targets": list(self.targets),
            "use_rslora": self.use_rslora,
            "rank_pattern": dict(self.rank_pattern),
        }
