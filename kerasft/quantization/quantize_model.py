"""`quantize_model`: post-training weight quantization of a keras-hub causal LM, in place.

Every targeted `EinsumDense`/`Dense` inside the decoder blocks is replaced, on
the layer that holds it, by a `QuantizedEinsumDense` with the same name and
variable paths. Methods:

- `"rtn"`: round-to-nearest with absmax (or min/max) group scales.
- `"clip"`: per-group range clipping chosen to minimise the layer's output
  error on calibration activations, then round-to-nearest.
- `"gptq"`: GPTQ error-compensating rounding under absmax group scales.
- `"clip+gptq"`: clipping search for the scales, then GPTQ rounding.

Calibrated methods quantize block by block (`block_calibration`): the
calibration tokens are embedded once and streamed through one block at a
time; the inputs of block `i` come from blocks `0..i-1` already quantized, so
later blocks compensate for the error of earlier ones (sequential GPTQ).
"""


import keras

from kerasft.evaluate._progress import Progress
from kerasft.models import architecture
from kerasft.quantization.block_calibration import calibrate_blocks
from kerasft.quantization.calibration import calibration_batches, relative_output_error
from kerasft.quantization.clipping import search_clip_ratios
from kerasft.quantization.gptq import gptq_quantize_matrix
from kerasft.quantization.quantized_dense import QuantizedEinsumDense, float_layer_spec
from kerasft.quantization.quantized_embedding import QuantizedEmbedding
from kerasft.quantization.quantizers import dequantize_matrix, quantize_matrix
from kerasft.targeting import (
    held_layers,
    iter_layers,
    path_matches,
    refresh_after_surgery,
    replace_in_graphs,
    sublayers_in_order,
    replace_attribute,
)

METHODS = ("rtn", "clip", "gptq", "clip+gptq")


def decoder_blocks(model):
    """The decoder blocks of a keras-hub causal LM (or backbone); see `architecture`."""
    return architecture.decoder_blocks(model)


def _is_float_dense(layer):
    return isinstance(layer, (keras.layers.EinsumDense, keras.layers.Dense)) and (
        getattr(layer, "quantization_mode", None) is None
    )


def _matches(layer, patterns):
    # `layer.name` too: a layer held by a kerasft wrapper keeps its own path.
    return patterns is None or any(
        path_matches(layer.path, p) or path_matches(layer.name, p) for p in patterns
    )


def find_targets(block, targets=None):
    """The float dense layers of one block to quantize, with the attribute holding each.

    Args:
        block: a decoder block layer.
        targets: None (every `EinsumDense`/`Dense` in the block) or targets
            in `kerasft.targeting`'s grammar (e.g. `"query"`, `"ffw_*"`,
            `"mlp"`, `"*decoder_block_0/*"`).

    Returns:
        A list of `(parent, attribute_name, layer)` in the block's layer order.
    """
    found = []
    for parent in iter_layers(block, include_self=True):
        for name, value in held_layers(parent).items():
            if not name.startswith("__") and _is_float_dense(value) and _matches(value, targets):
                found.append((parent, name, value))
    order = {id(layer): i for i, layer in enumerate(sublayers_in_order(block))}
    return sorted(found, key=lambda item: order.get(id(item[2]), len(order)))


def quantize_kernel(
    layer,
    mode,
    group_size="auto",
    method="rtn",
    hessian=None,
    asymmetric=False,
    double_quantize=False,
    scale_dtype="float32",
    damp=0.01,
):
    """Quantizes one float dense layer with the given method.

    Args:
        layer: a built `EinsumDense` or `Dense`.
        mode, group_size, asymmetric, double_quantize, scale_dtype: the scheme
            (see `QuantizedEinsumDense`).
        method: one of `METHODS`.
        hessian: `(K, K)` input second moments; required unless `"rtn"`.
        damp: GPTQ diagonal damping.

    Returns:
        `(quantized_layer, relative_output_error)`; the error is measured on
        the calibration inputs (None for `"rtn"` without a Hessian).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    quantized = QuantizedEinsumDense.from_float(
        layer,
        mode=mode,
        group_size=group_size,
        asymmetric=asymmetric,
        double_quantize=double_quantize,
        scale_dtype=scale_dtype,
    )
    weights = quantized.kernel_matrix(float_layer_spec(layer)["kernel"])
    scheme = dict(asymmetric=asymmetric, scale_dtype=scale_dtype)
    if method != "rtn":
        if hessian is None:
            raise ValueError(
                f"`hessian` is required for method={method!r}. Received: hessian=None"
            )
        clip_ratio = 1.0
        if method in ("clip", "clip+gptq"):
            clip_ratio = search_clip_ratios(weights, hessian, mode, quantized.group_size, **scheme)
        if method == "clip":
            matrix = quantize_matrix(
                weights, mode, quantized.group_size, double_quantize=double_quantize,
                clip_ratio=clip_ratio, **scheme,
            )
        else:
            matrix = gptq_quantize_matrix(
                weights, hessian, mode, quantized.group_size,
                double_quantize=double_quantize, clip_ratio=clip_ratio, damp=damp, **scheme,
            )
        quantized.assign_quantized_matrix(matrix)
    error = None
    if hessian is not None:
        reconstructed = dequantize_matrix(quantized.quantized_matrix(), mode, quantized.group_size)
        error = relative_output_error(weights, reconstructed, hessian)
    return quantized, error


def quantize_model(
    model,
    mode,
    targets=None,
    group_size="auto",
    calibration_data=None,
    method=None,
    asymmetric=False,
    double_quantize=False,
    scale_dtype="float32",
    damp=0.01,
    embedding=False,
    progress=True,
):
    """Quantizes the dense layers of a keras-hub causal LM's decoder blocks, in place.

    Args:
        model: a keras-hub `CausalLM` (e.g. `GemmaCausalLM`,
            `Gemma3CausalLM`) or its backbone.
        mode: `"int8"`, `"int4"` or `"nf4"`.
        targets: None for every `EinsumDense`/`Dense` of every decoder block,
            or targets in `kerasft.targeting`'s grammar: layer names, globs
            on names or paths, shortcuts (e.g. `["query", "value"]`,
            `["ffw_*"]`, `["mlp"]`). Each must match.
        group_size: `"auto"` (per channel for int8, 64 for int4/nf4), None
            (per channel) or an int dividing every targeted layer's
            contracted size.
        calibration_data: a list of strings (tokenised with the model's
            preprocessor) or an iterable of token-id batches (dicts with
            `token_ids` and `padding_mask`, or int arrays); required unless
            `method="rtn"`. With `method="rtn"` it only measures each
            layer's `output_error` in the report.
        method: `"rtn"`, `"clip"`, `"gptq"` or `"clip+gptq"`; None (the
            default) is `"rtn"` without `calibration_data`, and an error with
            it: calibration data is never ignored, and which calibrated
            method to use is the caller's choice (on the real Gemma 3 270M,
            NF4 + GPTQ measured worse than round-to-nearest; see README).
        asymmetric: integer modes: zero points per group.
        double_quantize: quantize the scales to int8 in blocks of 256.
        scale_dtype: `"float32"` or `"float16"` scale storage.
        damp: GPTQ diagonal damping (fraction of the mean diagonal).
        embedding: also quantize the (tied) token embedding table to int8
            with one scale per row (`QuantizedEmbedding`), whatever `mode`;
            it serves both the lookup and the output logits.
        progress: show a progress bar over the decoder blocks (while
            calibrating, and while rounding without calibration data).

    Returns:
        A list with one dict per quantized layer: `path`, `mode`,
        `float_bytes` (bf16), `quantized_bytes` and `output_error` (relative,
        on the calibration inputs; None for RTN without calibration data).

    Raises:
        ValueError: for an unknown `method`, a calibrated method without
            `calibration_data`, a target that matches nothing, or a
            `group_size` that does not divide a layer's contracted size.
    """
    if method is None and calibration_data is not None:
        raise ValueError(
            "`calibration_data` was given without a `method` that uses it: pass "
            "method='gptq', 'clip' or 'clip+gptq' to calibrate the quantization, or "
            "method='rtn' to round to nearest and only report each layer's output error. "
            "Received: method=None and calibration_data"
        )
    method = method or "rtn"
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    if calibration_data is not None:
        calibration_data = calibration_batches(model, calibration_data)
    if method != "rtn" and not calibration_data:
        raise ValueError(
            f"method={method!r} needs `calibration_data` (a list of token-id batches). "
            f"Received: calibration_data={calibration_data!r}"
        )
    if targets is not None:
        targets = [targets] if isinstance(targets, str) else list(targets)
    if embedding:
        _check_float_embedding(model)
    blocks = decoder_blocks(model)
    plan = [find_targets(block, targets) for block in blocks]
    all_layers = [layer for block_plan in plan for _, _, layer in block_plan]
    for pattern in targets or []:
        if not any(_matches(layer, [pattern]) for layer in all_layers):
            paths = sorted(layer.path for block in blocks for _, _, layer in find_targets(block))
            raise ValueError(
                "A target matched no float dense layer in the decoder blocks. "
                f"Received: targets={targets}, unmatched={pattern!r}. "
                f"Float dense layer paths: {paths}"
            )
    if not all_layers:
        raise ValueError(f"No float dense layer to quantize. Received: targets={targets}")
    # Check every group size before touching the model.
    for layer in all_layers:
        spec = float_layer_spec(layer)
        QuantizedEinsumDense(
            spec["equation"], spec["kernel"].shape, mode=mode, group_size=group_size,
            asymmetric=asymmetric, scale_dtype=scale_dtype,
        )

    report = []

    def quantize_block(index, hessians):
        for (parent, attribute, layer), hessian in zip(plan[index], hessians):
            quantized, error = quantize_kernel(
                layer, mode, group_size=group_size, method=method, hessian=hessian,
                asymmetric=asymmetric, double_quantize=double_quantize,
                scale_dtype=scale_dtype, damp=damp,
            )
            replace_attribute(parent, attribute, layer, quantized)
            report.append(
                {
                    "path": quantized.path,
                    "mode": mode,
                    "float_bytes": quantized.float_bytes("bfloat16"),
                    "quantized_bytes": quantized.quantized_bytes(),
                    "output_error": error,
                }
            )

    if calibration_data:
        calibrate_blocks(
            model, calibration_data, [[layer for _, _, layer in p] for p in plan],
            quantize_block, propagate="after", progress=progress,
        )
    else:
        # Round-to-nearest of the 270M's 18 blocks takes seconds: a bar as calibration has.
        bar = Progress(len(plan), progress, unit_name="block")
        for index, block_plan in enumerate(plan):
            quantize_block(index, [None] * len(block_plan))
            bar.update()
    if embedding:
        report.append(quantize_embedding(model))
    refresh_after_surgery(model)
    return report


def _check_float_embedding(model):
    backbone = architecture.backbone(model)
    embedding = getattr(backbone, "token_embedding", None)
    if isinstance(embedding, QuantizedEmbedding):
        raise ValueError(
            "The token embedding is already quantized. Received: embedding=True "
            f"and a token_embedding of type {type(embedding).__name__}"
        )
    if not isinstance(embedding, keras.layers.Embedding) or getattr(
        embedding, "tie_weights", True
    ) is False:
        raise ValueError(
            "embedding=True needs a backbone with a tied `token_embedding`. Received: "
            f"token_embedding={getattr(embedding, 'name', embedding)!r}"
        )
    return embedding


def quantize_embedding(model):
    """Replaces the token embedding of a keras-hub causal LM by an int8 `QuantizedEmbedding`.

    Returns:
        The report dict of the embedding (see `quantize_model`).

    Raises:
        ValueError: if the backbone has no tied `token_embedding`.
    """
    old = _check_float_embedding(model)
    new = QuantizedEmbedding.from_float(old)
    # `token_embedding` is a keras-hub property over `_token_embedding`, and
    # the functional graphs of the backbone and the task call the layer.
    replace_attribute(architecture.backbone(model), "token_embedding", old, new)
    replace_in_graphs(model, old, new)
    return {
        "path": new.path,
        "mode": "int8",
        "float_bytes": 2 * old.input_dim * old.output_dim,
        "quantized_bytes": new.quantized_bytes(),
        "output_error": None,
    }
