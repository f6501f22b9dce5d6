"""LoRA, rsLoRA: low-rank adapters on chosen dense layers of a frozen model."""

import fnmatch

from kerasft.layers.dora import DoRADense
from kerasft.layers.lora import LoRADense, validate_lora_arguments
from kerasft.recipes.base import Recipe, freeze_all, mark_applied, register_recipe
from kerasft.targeting import (
    adapter_wrappers,
    find_target_layers,
    normalize_targets,
    path_matches,
    wrap_layers,
)


def lora_layers(model):
    """Every `LoRADense` in `model`, in model order."""
    return adapter_wrappers(model, LoRADense)


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
        use_dora: wrap with `DoRADense` (weight-decomposed LoRA: a trainable
            per-output-feature magnitude times the normalised `W + scale*AB`)
            instead of `LoRADense`. The method name stays `"lora"`.
    """

    def __init__(
        self,
        rank=8,
        alpha=16.0,
        dropout=0.0,
        targets=("query", "value"),
        use_rslora=False,
        rank_pattern=None,
        use_dora=False,
    ):
        validate_lora_arguments(rank, alpha, dropout)
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.targets = normalize_targets(targets)
        self.use_rslora = bool(use_rslora)
        self.rank_pattern = dict(rank_pattern or {})
        if not isinstance(use_dora, bool):
            raise ValueError(f"`use_dora` must be True or False. Received: use_dora={use_dora!r}")
        self.use_dora = use_dora
        for pattern, pattern_rank in self.rank_pattern.items():
            validate_lora_arguments(pattern_rank, alpha, dropout)

    def rank_for(self, path):
        for pattern, pattern_rank in self.rank_pattern.items():
            if path_matches(path, pattern) or fnmatch.fnmatchcase(path, pattern):
                return pattern_rank
        return self.rank

    def wrapper_class(self):
        """The adapter layer this recipe puts on each target."""
        return DoRADense if self.use_dora else LoRADense

    def apply(self, model):
        find_target_layers(model, self.targets)  # fail before changing anything
        return self.wrap_targets(model)

    def wrap_targets(self, model):
        """Freezes `model` and wraps every target with `wrapper_class()`."""
        freeze_all(model)
        wrapper_class = self.wrapper_class()
        wrap_layers(
            model,
            self.targets,
            lambda path, layer: wrapper_class(
                layer,
                rank=self.rank_for(path),
                alpha=self.alpha,
                dropout=self.dropout,
                use_rslora=self.use_rslora,
                target_path=path,
            ),
        )
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
            "use_dora": self.use_dora,
        }
