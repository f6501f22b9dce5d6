"""LoRA, rsLoRA: low-rank adapters on chosen dense layers of a frozen model."""

import fnmatch

import numpy as np

from kerasft.layers.dora import DoRADense
from kerasft.layers.lora import (
    LoRADense,
    python_number,
    validate_flag,
    validate_lora_arguments,
)
from kerasft.recipes.base import register_recipe
from kerasft.recipes.wrapper_recipe import WrapperRecipe
from kerasft.targeting import adapter_wrappers, normalize_targets, path_matches


def lora_layers(model):
    """Every `LoRADense` in `model`, in model order."""
    return adapter_wrappers(model, LoRADense)


@register_recipe("lora")
class LoRA(WrapperRecipe):
    """Low-rank adaptation of the targeted dense layers; everything else frozen.

    Args:
        rank: rank of each update.
        alpha: scaling numerator; the update is scaled by `alpha / rank`
            (`alpha / sqrt(rank)` with `use_rslora=True`).
        dropout: dropout on the adapter input, in [0, 1).
        targets: layer names, path globs or shortcuts (`"attention"`,
            `"mlp"`, `"all-linear"`); see `kerasft.targeting`.
        use_rslora: rank-stabilised scaling.
        rank_pattern: optional `{name, glob or shortcut: rank}` overriding
            `rank` for matching target paths (first match wins;
            `"attention"` and `"mlp"` work as keys). A key that matches no
            target raises at `apply`.
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
        self.rank = int(rank)
        self.alpha = python_number(alpha)
        self.dropout = python_number(dropout)
        if targets is None:
            raise ValueError(
                "`targets` must be a non-empty list of layer names, path globs or "
                "shortcuts ('attention', 'mlp', 'all-linear'). Received: targets=None"
            )
        self.targets = normalize_targets(targets)
        self.use_rslora = validate_flag("use_rslora", use_rslora)
        if rank_pattern is not None and not isinstance(rank_pattern, dict):
            raise ValueError(
                "`rank_pattern` must be a dict of {layer name, path glob or shortcut: rank}. "
                f"Received: rank_pattern={rank_pattern!r}"
            )
        self.rank_pattern = {}
        for pattern, pattern_rank in (rank_pattern or {}).items():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(
                    "`rank_pattern` keys must be layer names, path globs or shortcuts. "
                    f"Received: rank_pattern key {pattern!r}"
                )
            if isinstance(pattern_rank, (bool, np.bool_)) or not isinstance(
                pattern_rank, (int, np.integer)
            ) or pattern_rank <= 0:
                raise ValueError(
                    "`rank_pattern` ranks must be positive integers. Received: "
                    f"rank_pattern={{{pattern!r}: {pattern_rank!r}}}"
                )
            self.rank_pattern[pattern] = int(pattern_rank)
        self.use_dora = validate_flag("use_dora", use_dora)

    def _pattern_matches(self, path, pattern):
        return path_matches(path, pattern) or fnmatch.fnmatchcase(path, pattern)

    def check_rank_pattern(self, target_paths):
        """Raises a ValueError for a `rank_pattern` key that matches none of `target_paths`.

        Called by `apply` before the model changes: a misspelt key would
        otherwise leave those layers at the default rank without a word.
        """
        for pattern in self.rank_pattern:
            if not any(self._pattern_matches(path, pattern) for path in target_paths):
                raise ValueError(
                    f"rank_pattern key {pattern!r} matches no target layer. Received: "
                    f"rank_pattern={self.rank_pattern!r}, targets={list(self.targets)!r}. "
                    f"Target layer paths: {sorted(target_paths)}"
                )

    def rank_for(self, path):
        for pattern, pattern_rank in self.rank_pattern.items():
            if self._pattern_matches(path, pattern):
                return pattern_rank
        return self.rank

    def wrapper_class(self):
        """The adapter layer this recipe puts on each target."""
        return DoRADense if self.use_dora else LoRADense

    def check_targets(self, targets):
        self.check_rank_pattern(targets)

    def make_wrapper(self, path, layer):
        return self.wrapper_class()(
            layer,
            rank=self.rank_for(path),
            alpha=self.alpha,
            dropout=self.dropout,
            use_rslora=self.use_rslora,
            target_path=path,
        )

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
