"""Which decoder kernels a model's perplexity is sensitive to quantizing.

`quantization_sensitivity` quantizes one group of decoder-block kernels at a
time (all kernels of one kind, e.g. every `ffw_linear`, or all kernels of one
block), measures the perplexity, and puts the float kernels back. The table
says where the error of a quantized base comes from and which kernels are
worth keeping at more bits (the same question llama.cpp's mixed "K_M" files
and Unsloth's dynamic 4-bit checkpoints answer).

The kernels are replaced by their round-to-nearest reconstruction (quantize,
then dequantize) in their own variables, so the model, its adapters and its
compiled functions stay as they are; a float layer holding the reconstruction
computes what the `QuantizedEinsumDense` of `quantize_model` computes.
"""

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import keras
import numpy as np
from keras import ops

from kerasft.evaluate.perplexity import perplexity
from kerasft.evaluate._progress import Progress
from kerasft.quantization.quantize_model import decoder_blocks, find_targets
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
        progress: show a progress bar over the evaluations.

    Returns:
        A dict with `float` (perplexity of the model as given), `all` (every
        target quantized) and `groups` (`{group: perplexity}` with one
        group quantized, in block order).

    Raises:
        ValueError: if `mode` or `by` is not supported, or no kernel matches
            `targets`.
    """
    validate_mode(mode)
    if by not in GROUPINGS:
        raise ValueError(f"`by` must be one of {GROUPINGS}. Received: by={by!r}")
    groups = {}
    for index, block in enumerate(decoder_blocks(model)):
        for _, _, layer in find_targets(block, targets):
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
    bar = Progress(len(groups) + 2, progress, unit_name="evaluation")

    def evaluate(layers: list[keras.Layer]) -> float:
        with reconstructed_kernels(layers, scheme):
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
    layers: Sequence[keras.Layer], scheme: dict[str, Any]
) -> Iterator[None]:
    """Within the block, `layers`' kernels hold their quantized reconstruction.

    Args:
        layers: float `EinsumDense`/`Dense` layers.
        scheme: `QuantizedEinsumDense.from_float` arguments (`mode`, ...).

    The float kernels are put back on exit, exception or not (also when
    quantizing a later layer fails).
    """
    saved = []
    try:
        for layer in layers:
            original = ops.convert_to_numpy(layer.kernel)
            reconstruction = QuantizedEinsumDense.from_float(layer, **scheme).dequantized_kernel()
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
