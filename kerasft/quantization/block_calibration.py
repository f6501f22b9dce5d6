"""Calibration that streams through the decoder blocks, one block at a time.

Calibrated quantization (GPTQ, clipping search), the QLoRA residual fit and
the calibrated sensitivity report need, for each targeted kernel, the
second moments `H = X^T X / rows` of the rows `X` it multiplies. Block `i`'s
inputs only depend on the embedding and blocks `0..i-1`, so
`calibrate_blocks` embeds the calibration tokens once, then for each block:

1. runs the block alone on the stored hidden states (a compiled function on
   JAX, eager without autograd on torch), recording the inputs of its
   targeted kernels (hooks on those kernels' calls, within that block only)
   and accumulating `H` in float64 over the real tokens, each row's first
   (the attention sink) left out (`calibration.hessian_positions`);
2. hands the Hessians to `on_block`, which may change the block (quantize
   its kernels, fit corrections);
3. runs the block again, as `on_block` left it, to produce the next block's
   inputs (`propagate="after"`: the sequential GPTQ of Frantar et al. and of
   Keras's `quantize("gptq")`), or keeps the outputs of step 1
   (`propagate="before"`, one pass per block).

Nothing runs the output head (60% of the 270M's forward FLOPs), and memory
holds the calibration set's hidden states at one block boundary plus one
chunk's activations inside a block (`max_rows` rows at a time).
"""

import contextlib
import functools
from typing import Any, Callable, Optional, Sequence

import keras
import numpy as np
from keras import ops

from kerasft.einsum import layer_equation, parse_equation
from kerasft.evaluate._progress import Progress, no_grad
from kerasft.models import architecture
from kerasft.quantization.calibration import (
    HessianAccumulator,
    calibration_inputs,
    check_hessian_positions,
    hessian_positions,
    input_rows,
)
from kerasft.targeting import iter_layers

PROPAGATE = ("after", "before")


def calibrate_blocks(
    model: Any,
    calibration_data: Sequence[Any],
    layers_per_block: Sequence[Sequence[Any]],
    on_block: Optional[Callable[[int, list], None]] = None,
    propagate: str = "after",
    progress: bool = True,
    max_rows: int = 8,
    description: str = "block",
    skip_first_position: bool = True,
) -> None:
    """Streams calibration batches block by block and hands each block's Hessians over.

    Args:
        model: a keras-hub causal LM or backbone (see
            `kerasft.models.architecture`).
        calibration_data: a non-empty list of token batches (see
            `calibration.calibration_inputs`).
        layers_per_block: one list per decoder block of the layers (inside
            that block) whose input Hessians to collect; an empty list skips
            the collection for that block.
        on_block: `on_block(index, hessians)` is called after block `index`
            ran, with one `(K, K)` float64 `mean(x x^T)` per layer of
            `layers_per_block[index]`; it may change the block.
        propagate: `"after"` runs each block again after `on_block` to feed
            the next block (needed when `on_block` changes the block's
            output); `"before"` feeds the next block the outputs recorded
            with the Hessians (one pass per block).
        progress: show a progress bar over the blocks.
        max_rows: calibration rows per chunk inside a block.
        description: the progress bar's unit name.
        skip_first_position: leave each row's first real token (the
            attention sink) out of the Hessians; it still runs through the
            blocks (see `calibration.hessian_positions`).

    Raises:
        ValueError: if `calibration_data` is empty, `layers_per_block` does not
            have one entry per block, a layer is not inside its block,
            `propagate` is unknown, or a layer saw no calibration row.
    """
    if propagate not in PROPAGATE:
        raise ValueError(
            f"`propagate` must be one of {PROPAGATE}. Received: propagate={propagate!r}"
        )
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
        raise ValueError(f"`max_rows` must be a positive integer. Received: max_rows={max_rows!r}")
    if calibration_data is None or len(calibration_data) == 0:
        raise ValueError(
            "`calibration_data` must be a non-empty list of token-id batches. "
            f"Received: calibration_data={calibration_data!r}"
        )
    blocks = architecture.decoder_blocks(model)
    if len(layers_per_block) != len(blocks):
        raise ValueError(
            "`layers_per_block` must hold one list per decoder block. Received: "
            f"{len(layers_per_block)} lists for {len(blocks)} blocks"
        )
    for index, (block, layers) in enumerate(zip(blocks, layers_per_block)):
        inside = {id(layer) for layer in iter_layers(block)}
        for layer in layers:
            if id(layer) not in inside:
                raise ValueError(
                    f"`layers_per_block[{index}]` holds a layer outside decoder block "
                    f"{index} ({block.name!r}). Received: layer={layer.path!r}"
                )
    bar = Progress(len(blocks), progress, unit_name=description)
    cache = {}  # compiled block functions, shared by blocks of one structure
    with no_grad():
        states = _embed(model, calibration_data, int(max_rows), skip_first_position)
        for index, (block, layers) in enumerate(zip(blocks, layers_per_block)):
            layers = list(layers)
            last = index == len(blocks) - 1
            if layers:
                outputs, hessians = _observe(block, layers, states, cache)
                if on_block is not None:
                    on_block(index, hessians)
                del hessians
                if propagate == "after" and not last:
                    outputs = _run(block, states, cache)
            elif not last:
                outputs = _run(block, states, cache)
            if not last:
                states = [(output, *state[1:]) for output, state in zip(outputs, states)]
            bar.update()
        bar.finish()


def _embed(model, calibration_data, max_rows, skip_first_position=True):
    """`[(hidden, int padding mask, bool Hessian positions)]`, one per chunk of at most `max_rows` rows."""
    states = []
    for batch in calibration_data:
        inputs = calibration_inputs(batch)
        for start in range(0, inputs["token_ids"].shape[0], max_rows):
            ids = inputs["token_ids"][start : start + max_rows]
            mask = inputs["padding_mask"][start : start + max_rows]
            hidden = architecture.embed_tokens(model, ops.convert_to_tensor(ids, "int32"))
            positions = hessian_positions(mask, skip_first_position)
            states.append((hidden, ops.convert_to_tensor(mask.astype("int32")), positions))
    check_hessian_positions([positions for *_, positions in states])
    return states


def _run(block, states, cache):
    function = _block_function(block, [], cache)
    return [function(hidden, mask)[0] for hidden, mask, _ in states]


def _observe(block, layers, states, cache):
    """Runs `block` on every chunk; returns its outputs and each layer's mean Hessian."""
    function = _block_function(block, layers, cache)
    accumulators = [HessianAccumulator(layer_equation(layer)) for layer in layers]
    outputs = []
    for hidden, mask, numpy_mask in states:
        output, inputs, calls = function(hidden, mask)
        outputs.append(output)
        products = {}  # q/k/v (and both gates) share one input: one product
        for layer_index, input_index in calls:
            accumulator = accumulators[layer_index]
            x = inputs[input_index]
            key = (input_index, _rows_layout(accumulator.equation, len(x.shape)))
            if key not in products:
                rows = input_rows(x, accumulator.equation, numpy_mask)
                products[key] = (rows.T @ rows, rows.shape[0])
            product, num_rows = products[key]
            if accumulator.hessian is None:
                accumulator.hessian = np.zeros_like(product)
            accumulator.hessian += product
            accumulator.num_rows += num_rows
        del inputs, products
    hessians = []
    for layer, accumulator in zip(layers, accumulators):
        if accumulator.num_rows == 0:
            raise ValueError(
                "No calibration row reached a layer: it is not called by its decoder "
                f"block's `call`. Received: layer={layer.path!r}"
            )
        hessians.append(accumulator.mean_hessian())
    return outputs, hessians


def _rows_layout(equation, ndim):
    """What `input_rows` does to an input: equal layouts of one tensor give equal rows."""
    axes = parse_equation(equation)
    return tuple(axes.input_to_rows_perm(ndim)), len(axes.contracted_letters)


@contextlib.contextmanager
def _recorded_calls(layers, record):
    """Wraps each layer's `call` to note `(layer index, input)` in `record`."""

    def wrap(index, original):
        def call(inputs, *args, **kwargs):
            record.append((index, inputs))
            return original(inputs, *args, **kwargs)

        return call

    try:
        for index, layer in enumerate(layers):
            layer.call = wrap(index, layer.call)
        yield
    finally:
        for layer in layers:
            if "call" in vars(layer):
                del layer.call


def _unique_inputs(record):
    """`(inputs, calls)`: distinct input tensors, `(layer index, input index)` per call."""
    inputs, calls = [], []
    for layer_index, tensor in record:
        for input_index, seen in enumerate(inputs):
            if seen is tensor:
                break
        else:
            input_index = len(inputs)
            inputs.append(tensor)
        calls.append((layer_index, input_index))
    return inputs, calls


def _block_function(block, layers, cache):
    """`f(hidden, mask) -> (output, kernel inputs, calls)` for one block.

    On JAX the block's `stateless_call` is compiled ahead of time
    (`jax.jit(...).lower(...).compile()`) for each chunk shape; the hooks run
    while tracing, so the kernel inputs come out of the compiled function.
    Blocks of one structure (same layer types, plain attributes and variable
    shapes, e.g. every sliding-window block of Gemma 3) share the executable,
    fed each block's own variable values; as it is compiled ahead of time, it
    stays valid when the block it was traced on is quantized afterwards.
    Elsewhere the block runs eagerly.
    """
    if keras.backend.backend() != "jax":

        def eager(hidden, mask):
            record = []
            with _recorded_calls(layers, record):
                output = architecture.call_decoder_block(block, hidden, mask)
            inputs, calls = _unique_inputs(record)
            return output, inputs, calls

        return eager

    import jax

    key = _structure_key(block, layers)
    trainable = list(block.trainable_variables)
    non_trainable = list(block.non_trainable_variables)

    def run(hidden, mask):
        values = ([v.value for v in trainable], [v.value for v in non_trainable])
        shapes = (tuple(hidden.shape), str(hidden.dtype), tuple(mask.shape), str(mask.dtype))
        if (key, shapes) not in cache:
            calls = []

            def stateless(trainable_values, non_trainable_values, hidden, mask):
                record = []
                with _recorded_calls(layers, record):
                    call = functools.partial(
                        block.stateless_call, trainable_values, non_trainable_values
                    )
                    output, _ = architecture.call_decoder_block(call, hidden, mask)
                inputs, traced_calls = _unique_inputs(record)
                calls.extend(traced_calls)
                return output, inputs

            compiled = jax.jit(stateless).lower(*values, hidden, mask).compile()
            cache[(key, shapes)] = (compiled, calls)
        compiled, calls = cache[(key, shapes)]
        output, inputs = compiled(*values, hidden, mask)
        return output, inputs, calls

    return run


_SIMPLE = (int, float, str, bool, type(None))
# Attributes that name a layer's place or history, not what it computes.
_PLACE_ATTRIBUTES = ("name", "_name", "_path", "_parent_path", "_called")


def _structure_key(block, layers):
    """What a compiled block function depends on, beyond the variable values.

    Each sub-layer contributes its type, dtype policy and plain attributes
    (numbers, strings, flags: head counts, window sizes, rope wavelength,
    quantization mode, ...), its place names left out, so two blocks share a
    key only when they compute the same function of their variables.
    """
    sublayers = list(iter_layers(block, include_self=True))
    parts = []
    for layer in sublayers:
        attributes = sorted(
            (name, value)
            for name, value in vars(layer).items()
            if name not in _PLACE_ATTRIBUTES
            and (
                isinstance(value, _SIMPLE)
                or (isinstance(value, tuple) and all(isinstance(v, _SIMPLE) for v in value))
            )
        )
        policy = getattr(getattr(layer, "dtype_policy", None), "name", None)
        parts.append((type(layer).__module__, type(layer).__qualname__, policy, repr(attributes)))
    positions = {id(layer): i for i, layer in enumerate(sublayers)}
    observed = tuple(positions[id(layer)] for layer in layers)
    variables = tuple(
        (tuple(v.shape), str(v.dtype), v.trainable)
        for v in list(block.trainable_variables) + list(block.non_trainable_variables)
    )
    return tuple(parts), variables, observed
