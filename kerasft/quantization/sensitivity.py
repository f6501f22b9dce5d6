"""Which decoder kernels a model's perplexity is sensitive to quantizing.

`quantization_sensitivity` quantizes one group of decoder-block kernels at a
time (all kernels of one kind, e.g. every `ffw_linear`, or all kernels of one
block), measures the perplexity, and puts the float kernels back. The table
says where the error of a quantized base comes from and which kernels are
worth keeping at more bits (the same question llama.cpp's mixed "K_M" files
and Unsloth's dynamic 4-bit checkpoints answer).

The kernels are replaced by their reconstruction (quantize, then dequantize)
in their own variables, so the model, its adapters and its compiled
functions stay as they are; a float layer holding the reconstruction
computes what the `QuantizedEinsumDense` of `quantize_model` computes. The
reconstruction is round-to-nearest, or with `calibration_data` a calibrated
method (GPTQ, clipping search): the Hessians of every target then come from
one streamed pass of the float model through its decoder blocks
(`block_calibration.calibrate_blocks`), so each group is rounded as if it
were the only quantized one.
"""

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import keras
import numpy as np
from keras import ops

from kerasft.evaluate.perplexity import perplexity
from kerasft.evaluate._progress import Progress
from kerasft.quantization.block_calibration import calibrate_blocks
from kerasft.quantization.calibration import calibration_batches
from kerasft.quantization.quantize_model import (
    METHODS,
    decoder_blocks,
    find_targets,
    quantize_kernel,
)
from kerasft.quantization.quantized_dense import QuantizedEinsumDense
from kerasft.quantization.quantizers import validate_mode

GROUPINGS = ("kind", "block")


def quantization_sensitivity(
    model: keras.Model,
    batches: Iterable[Any],
    mode: str = "nf4",
    group_size: int | str | None = "auto",
    asymmetric: bool = False,
    double_quantize: bool = False,
    by: str = "kind",
    targets: str | Sequence[str] | None = None,
    progress: bool = True,
    calibration_data: Any = None,
    method: str | None = None,
) -> dict[str, Any]:
    """Perplexity with each group of decoder kernels quantized alone.

    Args:
        model: a keras-hub causal LM, plain or with adapters (the kernels
            under LoRA wrappers are quantized, the adapters are kept).
        batches: `(x, y, sample_weight)` batches, as for
            `kerasft.evaluate.perplexity`.
        mode, group_size, asymmetric, double_quantize: the quantization
            scheme, as for `kerasft.quantize`.
        by: `"kind"` groups kernels by layer name (`"query"`,
            `"ffw_linear"`, ...); `"block"` by decoder block index.
        targets: None (every dense kernel of every decoder block) or targets
            in `kerasft.targeting`'s grammar, as for `kerasft.quantize`.
        progress: show a progress bar over the evaluations (and the
            calibration's blocks).
        calibration_data: strings or token batches, as for
            `kerasft.quantize`; with it the kernels are reconstructed by a
            calibrated `method`, on Hessians of the float model (kept
            meanwhile: one float32 reconstruction per target).
        method: `"rtn"`, `"gptq"`, `"clip"` or `"clip+gptq"`; None is
            `"gptq"` with `calibration_data` and `"rtn"` without.

    Returns:
        A dict with `float` (perplexity of the model as given), `all` (every
        target quantized) and `groups` (`{group: perplexity}` with one
        group quantized, in block order).

    Raises:
        ValueError: if `mode`, `by` or `method` is not supported, no kernel
            matches `targets`, a calibrated method has no `calibration_data`,
            or `method="rtn"` has some (it would be ignored).
    """
    validate_mode(mode)
    if method is None:
        method = "rtn" if calibration_data is None else "gptq"
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    if (method == "rtn") != (calibration_data is None):
        raise ValueError(
            "A calibrated `method` needs `calibration_data`, and `method='rtn'` uses "
            f"none (the reconstruction ignores it; pass method='gptq'). Received: "
            f"method={method!r}, calibration_data="
            f"{'None' if calibration_data is None else 'given'}"
        )
    if by not in GROUPINGS:
        raise ValueError(f"`by` must be one of {GROUPINGS}. Received: by={by!r}")
    groups = {}
    per_block = []
    for index, block in enumerate(decoder_blocks(model)):
        per_block.append([layer for _, _, layer in find_targets(block, targets)])
        for layer in per_block[-1]:
            key = index if by == "block" else layer.name
            groups.setdefault(key, []).append(layer)
    if not groups:
        raise ValueError(
            "No dense kernel of the decoder blocks matches `targets`. "
            f"Received: targets={targets!r}"
        )
    scheme = dict(
        mode=mode,
        group_size=group_size,
        asymmetric=asymmetric,
        double_quantize=double_quantize,
    )
    reconstructions = None
    if calibration_data is not None:
        reconstructions = {}
        batches_for_calibration = calibration_batches(model, calibration_data)

        def reconstruct(index: int, hessians: list[np.ndarray]) -> None:
            for layer, hessian in zip(per_block[index], hessians):
                quantized, _ = quantize_kernel(layer, method=method, hessian=hessian, **scheme)
                reconstructions[id(layer)] = ops.convert_to_numpy(quantized.dequantized_kernel())

        calibrate_blocks(
            model, batches_for_calibration, per_block, reconstruct, propagate="before",
            progress=progress, description="block (calibration)",
        )
    bar = Progress(len(groups) + 2, progress, unit_name="evaluation")

    def evaluate(layers: list[keras.Layer]) -> float:
        with reconstructed_kernels(layers, scheme, reconstructions):
            result = perplexity(model, batches, progress=False)["perplexity"]
        bar.update()
        return result

    result = {"float": perplexity(model, batches, progress=False)["perplexity"]}
    bar.update()
    result["groups"] = {key: evaluate(layers) for key, layers in groups.items()}
    result["all"] = evaluate([layer for layers in groups.values() for layer in layers])
    return result


@contextlib.contextmanager
def reconstructed_kernels(
    layers: Sequence[keras.Layer],
    scheme: dict[str, Any],
    reconstructions: dict[int, np.ndarray] | None = None,
) -> Iterator[None]:
    """Within the block, `layers`' kernels hold their quantized reconstruction.

    Args:
        layers: float `EinsumDense`/`Dense` layers.
        scheme: `QuantizedEinsumDense.from_float` arguments (`mode`, ...).
        reconstructions: optional `{id(layer): kernel}` computed beforehand
            (e.g. by GPTQ); the other layers are rounded to nearest.

    The float kernels are put back on exit, exception or not (also when
    quantizing a later layer fails).
    """
    saved = []
    try:
        for layer in layers:
            original = ops.convert_to_numpy(layer.kernel)
            if reconstructions is not None and id(layer) in reconstructions:
                reconstruction = reconstructions[id(layer)]
            else:
                reconstruction = QuantizedEinsumDense.from_float(
                    layer, **scheme
                ).dequantized_kernel()
            saved.append((layer, original))
            layer.kernel.assign(ops.cast(reconstruction, layer.kernel.dtype))
        yield
    finally:
        for layer, original in reversed(saved):
            layer.kernel.assign(original)


def sensitivity_table(result: dict[str, Any]) -> str:
    """The result of `quantization_sensitivity` as Markdown rows (change vs float)."""
    base = result["float"]
    rows = ["| quantized | perplexity | change |", "|---|---|---|"]
    for key, value in list(result["groups"].items()) + [("all", result["all"])]:
        label = f"block {key}" if isinstance(key, (int, np.integer)) else str(key)
        rows.append(f"| {label} | {value:.2f} | {100 * (value / base - 1):+.1f}% |")
    return "\n".join(rows)
