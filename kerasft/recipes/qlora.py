"""QLoRA: LoRA adapters on top of a frozen, weight-quantized (NF4/int4/int8) base."""

import functools

import numpy as np
from keras import ops

from kerasft.layers.lora import validate_flag
from kerasft.layers.qlora import QLoRADense, validate_residual_rank
from kerasft.models import architecture
from kerasft.quantization.block_calibration import calibrate_blocks
from kerasft.quantization.calibration import calibration_batches
from kerasft.quantization.quantize_model import quantize_model
from kerasft.quantization.quantized_dense import QuantizedEinsumDense
from kerasft.quantization.quantizers import validate_mode
from kerasft.quantization.residual_init import low_rank_residual, weighted_error
from kerasft.recipes.base import register_recipe
from kerasft.recipes.lora import LoRA, lora_layers
from kerasft.targeting import iter_layers

INITS = ("zeros", "residual")


@register_recipe("qlora")
class QLoRA(LoRA):
    """LoRA on a frozen base whose decoder-block kernels are quantized (QLoRA).

    `apply` quantizes the base in place with round-to-nearest
    (`kerasft.quantization.quantize_model`, deterministic, so `load_adapter`
    rebuilds the same base from a float checkpoint), then wraps the LoRA
    targets, quantized or not, with adapters. Adapter weights are float32.

    With `init="residual"` the adapters of quantized layers do not start at
    zero but at the best rank-`r` approximation of the quantization error
    `W - Q` (LoftQ), weighted by real activations when `apply` gets
    `calibration_data` (CLoQ): the model starts close to the float one
    instead of the quantized one. The adapter file holds these factors, so
    `load_adapter` needs neither the data nor the float weights' SVD again.

    Args:
        rank, alpha, dropout, targets, use_rslora, rank_pattern: as `LoRA`.
        quantization: `"nf4"`, `"int4"` or `"int8"`.
        group_size: rows of the contracted axis per scale (must divide every
            quantized layer's contracted size), or None for per channel.
        double_quant: store the scales as int8 blocks (QLoRA's double
            quantization).
        quantize_targets: None for every kernel of every decoder block, or
            targets in the same grammar as `targets` (names, globs,
            `"attention"` / `"mlp"`; see `kerasft.targeting`).
        quantize_embedding: also store the frozen tied token embedding as
            int8 with a scale per row (for Gemma 3 270M, 168M of its 268M
            parameters).
        init: `"zeros"` (`B = 0`: the adapter model equals the quantized
            base at the start) or `"residual"` (the factors approximate the
            quantization error; see above).
        residual_rank: rank of a frozen correction of each quantized
            target's quantization error, kept beside the adapter (fitted
            like `init="residual"`, saved in the adapter file; 0 for none).
            The adapter then trains from `B = 0` over a base closer to the
            float one. Costs `residual_rank * (fan_in + fan_out)` float32
            values per target.
    """

    def __init__(
        self,
        rank=8,
        alpha=16.0,
        dropout=0.0,
        targets=("query", "value"),
        quantization="nf4",
        group_size=64,
        double_quant=True,
        quantize_targets=None,
        quantize_embedding=False,
        use_rslora=False,
        rank_pattern=None,
        init="zeros",
        residual_rank=0,
    ):
        if init not in INITS:
            raise ValueError(f"`init` must be one of {INITS}. Received: init={init!r}")
        validate_residual_rank(residual_rank)
        super().__init__(
            rank=rank, alpha=alpha, dropout=dropout, targets=targets,
            use_rslora=use_rslora, rank_pattern=rank_pattern,
        )
        validate_mode(quantization)
        self.quantization = quantization
        self.group_size = group_size
        self.double_quant = validate_flag("double_quant", double_quant)
        if isinstance(quantize_targets, str):
            quantize_targets = [quantize_targets]
        self.quantize_targets = None if quantize_targets is None else list(quantize_targets)
        self.quantize_embedding = validate_flag("quantize_embedding", quantize_embedding)
        self.init = init
        self.residual_rank = int(residual_rank)

    def wrapper_class(self):
        return functools.partial(QLoRADense, residual_rank=self.residual_rank)

    def apply(self, model, calibration_data=None):
        """Quantizes the base, wraps the targets, and fits the quantization error.

        Args:
            model: a keras-hub causal LM with float decoder-block kernels.
            calibration_data: with `residual_rank > 0` or `init="residual"`,
                strings or token batches (see
                `kerasft.quantization.calibration.calibration_batches`) whose
                activations weight the fit; None for an unweighted fit
                (LoftQ).

        Returns:
            `model`, changed in place. `self.initialization_report` holds each
            quantized target's relative error before and after the fit.

        Raises:
            ValueError: if a target matches nothing, or `calibration_data` is
                given while nothing is fitted (it would be ignored).
        """
        fits_residual = self.init == "residual" or self.residual_rank > 0
        return self._apply(model, calibration_data, initialize=fits_residual)

    def apply_for_loading(self, model):
        # The adapter file holds the started (and trained) factors.
        return self._apply(model, None, initialize=False)

    def _apply(self, model, calibration_data, initialize):
        # `check_targets` and `prepare` (called by `WrapperRecipe.apply`) read these.
        self._start = {"calibration_data": calibration_data, "initialize": initialize}
        try:
            super().apply(model)
            if initialize:
                self.initialization_report = start_from_residual(
                    model, self._start["float_kernels"], self._start["calibration_data"],
                    adapters=self.init == "residual",
                )
        finally:
            del self._start
        return model

    def check_targets(self, targets):
        super().check_targets(targets)
        if (self._start["calibration_data"] is not None and self.init != "residual"
                and not self.residual_rank):
            raise ValueError(
                "`calibration_data` only weights the fit of the quantization error "
                "(init='residual' or residual_rank > 0). Received: "
                f"init={self.init!r}, residual_rank=0 and calibration_data"
            )

    def prepare(self, model, targets):
        """Quantizes the base in place (before the targets are wrapped)."""
        if self._start["initialize"]:
            if self._start["calibration_data"] is not None:
                self._start["calibration_data"] = calibration_batches(
                    model, self._start["calibration_data"]
                )
            # Kept (not copied) until the factors are set: the float kernels
            # are the only record of `W` once the layers are quantized.
            self._start["float_kernels"] = {path: layer.kernel for path, layer in targets.items()}
        quantize_model(
            model,
            self.quantization,
            targets=self.quantize_targets,
            embedding=self.quantize_embedding,
            group_size=self.group_size,
            double_quantize=self.double_quant,
        )

    merge_options = ("requantize",)

    def merge(self, model, batch=None, requantize=False):
        """Folds every adapter into its layer and removes the wrappers (`Recipe.merge`).

        Args:
            model: a model `QLoRA.apply` changed (and trained).
            batch: inputs (`{"token_ids", "padding_mask"}`, or an
                `(x, y, sample_weight)` tuple) on which to measure the max
                absolute logit difference between the adapter model and the
                merged one.
            requantize: False (default): each quantized target is replaced by
                a float `EinsumDense`/`Dense` holding `dequantized + correction
                + delta`, an exact merge (a float export of the targeted
                layers; the other layers stay quantized). True: the sum is
                quantized again into the quantized layer (smaller, not exact;
                warns).

        Returns:
            A dict with `merged` (the layer paths) and
            `max_abs_logit_difference` (float, or None without `batch`).
        """
        return super().merge(model, batch, requantize=requantize)

    def get_config(self):
        # Written out rather than extending `LoRA.get_config`, so that options
        # LoRA gains later (and QLoRA does not implement) never land here.
        return {
            "method": self.method,
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "targets": list(self.targets),
            "use_rslora": self.use_rslora,
            "rank_pattern": dict(self.rank_pattern),
            "quantization": self.quantization,
            "group_size": self.group_size,
            "double_quant": self.double_quant,
            "quantize_targets": self.quantize_targets,
            "quantize_embedding": self.quantize_embedding,
            "init": self.init,
            "residual_rank": self.residual_rank,
        }


def start_from_residual(model, float_kernels, calibration_data=None, adapters=True):
    """Fits each quantized target's frozen correction, then LoRA factors, to `W - Q`.

    The frozen correction (`residual_rank > 0`) takes the first singular
    directions of the error; with `adapters`, the LoRA factors take the next.
    With calibration data the Hessians come from one streamed pass through
    the decoder blocks of the quantized model (`calibrate_blocks`, corrections
    not yet applied), each block's targets fitted as soon as its Hessians are
    in.

    Args:
        model: a model `QLoRA.apply` quantized and wrapped, adapters untrained.
        float_kernels: `{target path: float kernel}` recorded before quantizing.
        calibration_data: None or a list of input dicts; their activations
            (through the quantized model) weight the approximation.
        adapters: also set the LoRA factors (`init="residual"`).

    Returns:
        `{target path: (error before, error after)}`: the relative output
        errors of `Q` and of `Q` plus the fitted terms against `W` (on the
        calibration activations, or plain Frobenius norms without them).
    """
    wrappers = [
        wrapper for wrapper in lora_layers(model)
        if isinstance(wrapper.layer, QuantizedEinsumDense) and wrapper.target_path in float_kernels
    ]
    report = {}

    def fit(wrapper, hessian):
        layer = wrapper.layer
        kernel = ops.convert_to_numpy(ops.cast(float_kernels[wrapper.target_path], "float32"))
        weights = layer.kernel_matrix(kernel)
        error = weights - layer.kernel_matrix(
            ops.convert_to_numpy(layer.dequantized_kernel("float32"))
        )
        remaining = error
        if wrapper.residual_rank:
            a, b = low_rank_residual(remaining, wrapper.residual_rank, hessian)
            _assign_factors(wrapper.residual_a, wrapper.residual_b, a, b)
            remaining = remaining - a @ b
        if adapters:
            a, b = low_rank_residual(remaining, wrapper.rank, hessian)
            # delta = scale * A @ B, so each factor carries 1/sqrt(scale).
            root_scale = np.sqrt(wrapper.scale)
            _assign_factors(wrapper.lora_a, wrapper.lora_b, a / root_scale, b / root_scale)
            remaining = remaining - a @ b
        reference = weighted_error(weights, hessian)
        report[wrapper.target_path] = (
            float(np.sqrt(weighted_error(error, hessian) / reference)),
            float(np.sqrt(weighted_error(remaining, hessian) / reference)),
        )

    if calibration_data is None or not wrappers:
        for wrapper in wrappers:
            fit(wrapper, None)
        return report
    # Quantized layers live in the decoder blocks only (see `quantize_model`).
    per_block = []
    for block in architecture.decoder_blocks(model):
        inside = {id(layer) for layer in iter_layers(block)}
        per_block.append([w for w in wrappers if id(w.layer) in inside])

    def fit_block(index, hessians):
        for wrapper, hessian in zip(per_block[index], hessians):
            fit(wrapper, hessian)

    calibrate_blocks(
        model, calibration_data, [[w.layer for w in block] for block in per_block],
        fit_block, propagate="before", description="block (residual fit)",
    )
    # Report in the order of the targets, as before.
    return {w.target_path: report[w.target_path] for w in wrappers}


def _assign_factors(a_variable, b_variable, a, b):
    a_variable.assign(np.reshape(a, a_variable.shape).astype("float32"))
    b_variable.assign(np.reshape(b, b_variable.shape).astype("float32"))
