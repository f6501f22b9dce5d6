"""Past one device: data and model parallel fine-tuning through `keras.distribution`.

kerasft does not bring its own distributed engine: a run on several devices is
Keras's own `keras.distribution` (JAX backend), set up for Gemma / Gemma 3 and
for the variables kerasft's recipes add.

- `layout_map(device_mesh)`: a `keras.distribution.LayoutMap` that places the
  base kernels as keras-hub's `GemmaBackbone.get_layout_map` does (keras-hub
  0.32; Gemma 3 uses the same variable paths), plus every recipe's variables:
  LoRA / QLoRA `A` and `B` (and QLoRA's frozen residual) follow the model axis
  of the kernel they change, DoRA magnitudes follow the kernel's output axis,
  quantized kernels (`kerasft.quantization.QuantizedEinsumDense`: int8, int4,
  NF4) are sharded like the float kernel they replace, in its flattened
  `(contracted, output)` matrix form, with their group scales and zero points
  sharded the same way; double-quantized scale blocks, norms, prefixes, soft
  prompts, prefix encoders and IA3 vectors are replicated.
- `distribution_from_config({"data": N, "model": M})`: data parallel
  (`model: 1`, every variable replicated: `keras.distribution.DataParallel`),
  model parallel (`data: 1`) or both (a `data x model` mesh), the `distribution:`
  section of a training config.
- `distribute_model(model)`: places every variable of a model that was built
  (or adapted) outside the distribution's scope; a no-op without a distribution.

Keras applies a layout when a variable is created under a distribution. Recipes
create their wrappers' variables at their final paths (`targeting.place_under`),
so a recipe applied inside `distribution.scope()` gets its layouts at creation;
`distribute_model` covers the rest (a model loaded before the scope was entered).

A sharded axis that does not divide a variable's dimension (Gemma 3 270M has one
key/value head) is replicated instead of failing: `GemmaModelParallel` checks
every layout against the variable's shape.
"""

from __future__ import annotations

import math
from typing import Any

import keras

DATA_AXIS = "data"
MODEL_AXIS = "model"
LORA_LAYOUTS = ("sharded", "replicated")

# Layer paths of the dense kernels of a Gemma / Gemma 3 decoder block (the names
# are `kerasft.models.architecture`'s ATTENTION_LAYER_NAMES / MLP_LAYER_NAMES).
_QKV = r"decoder_block_\d+/attention/(query|key|value)"
_ATTENTION_OUTPUT = r"decoder_block_\d+/attention/attention_output"
_GATING = r"decoder_block_\d+/ffw_gating(_2)?"
_LINEAR = r"decoder_block_\d+/ffw_linear"
# The layer a recipe puts around a target is named after it (`query_lora`,
# `ffw_linear_dora`, ...) and holds the adapter's variables.
_WRAPPER = r"_[a-z0-9_]+"

_M, _D = "model", "data"  # placeholders, replaced by the mesh's axis names
# (target, float kernel, wrapper's A, wrapper's B, DoRA magnitude, quantized matrix).
# keras-hub's map shards a kernel on the model axis on its head / intermediate
# side and on the data axis on its hidden side. A is `fan_in + (rank,)`, B is
# `(rank,) + fan_out`: each takes the model axis where the kernel has it on that
# side (the data axis is not carried over: adapters are too small to gain from
# being split across replicas). A quantized kernel is the `(contracted, output)`
# matrix of the float kernel, flattened in the kernel's letter order.
_RULES = (
    (_QKV, (_M, _D, None), (None, None), (None, _M, None), (_M, None), (_D, _M)),
    (_ATTENTION_OUTPUT, (_M, None, _D), (_M, None, None), (None, None), None, (_M, _D)),
    (_GATING, (_D, _M), (None, None), (None, _M), (_M,), (_D, _M)),
    (_LINEAR, (_M, _D), (_M, None), (None, None), None, (_M, _D)),
)


def _check_jax(what: str) -> None:
    backend = keras.backend.backend()
    if backend != "jax":
        raise RuntimeError(
            f"{what} needs the JAX backend: kerasft distributes training through "
            "`keras.distribution`, which Keras implements for JAX only (set "
            f"KERAS_BACKEND=jax). Received: backend={backend!r}"
        )


def layout_map(
    device_mesh: keras.distribution.DeviceMesh,
    lora: str = "sharded",
    model_axis: str = MODEL_AXIS,
    data_axis: str = DATA_AXIS,
) -> keras.distribution.LayoutMap:
    """The layouts of a Gemma / Gemma 3 causal LM and of every kerasft recipe's variables.

    Variables the map does not name are replicated. Use it with
    `GemmaModelParallel` (which replicates an axis that does not divide a
    dimension) or, when every sharded dimension divides, with
    `keras.distribution.ModelParallel`.

    Args:
        device_mesh: a 2-D mesh with axes `data_axis` and `model_axis`.
        lora: `"sharded"`: LoRA `A` / `B` take the model axis of the kernel
            they change (on the side it has it); `"replicated"`: every
            adapter variable is replicated (see bench/distribution_throughput.py).
        model_axis: the mesh axis the weights are split over.
        data_axis: the mesh axis the batch is split over; keras-hub's map also
            splits the base kernels' hidden side over it.

    Returns:
        A `keras.distribution.LayoutMap`.

    Raises:
        ValueError: for a mesh without both axes or another `lora`.
    """
    if lora not in LORA_LAYOUTS:
        raise ValueError(f"`lora` must be one of {LORA_LAYOUTS}. Received: lora={lora!r}")
    for name, axis in (("model_axis", model_axis), ("data_axis", data_axis)):
        if axis not in device_mesh.axis_names:
            raise ValueError(
                f"`{name}` must be an axis of the device mesh {tuple(device_mesh.axis_names)}. "
                f"Received: {name}={axis!r}"
            )

    def axes(spec):
        return tuple({_M: model_axis, _D: data_axis}.get(a, a) for a in spec)

    layouts = keras.distribution.LayoutMap(device_mesh)
    layouts["token_embedding/embeddings"] = axes((_M, _D))
    # kerasft.quantization.QuantizedEmbedding (QLoRA's quantize_embedding).
    layouts["token_embedding/embeddings_codes"] = axes((_M, _D))
    layouts["token_embedding/embeddings_scale"] = axes((_M,))
    for target, kernel, lora_a, lora_b, magnitude, matrix in _RULES:
        layouts[f"{target}/kernel"] = axes(kernel)
        # Group scales and zero points are `(groups, output)`: groups run along
        # the contracted side, so they split where the codes' rows do.
        layouts[f"{target}/kernel_(codes|scale|zero)"] = axes(matrix)
        if lora == "sharded":
            layouts[f"{target}{_WRAPPER}/(lora|residual)_a"] = axes(lora_a)
            layouts[f"{target}{_WRAPPER}/(lora|residual)_b"] = axes(lora_b)
            if magnitude is not None:
                layouts[f"{target}{_WRAPPER}/magnitude"] = axes(magnitude)
    return layouts


class GemmaModelParallel(keras.distribution.ModelParallel):
    """`keras.distribution.ModelParallel` that replicates the axes a variable cannot be split on.

    A layout-map axis whose mesh size does not divide the variable's dimension
    (one key/value head over 8 model shards) is replaced by `None` for that
    variable, where JAX would refuse the layout.

    Args:
        layout_map: a `keras.distribution.LayoutMap` (`layout_map(...)`).
        batch_dim_name: the mesh axis the batch is split over.
        **kwargs: `keras.distribution.ModelParallel` arguments.
    """

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        return fit_layout(layout, variable.shape)


def fit_layout(layout, shape) -> keras.distribution.TensorLayout:
    """`layout` with every axis that does not divide its dimension of `shape` replaced by None."""
    mesh = layout.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape))
    axes = tuple(layout.axes) + (None,) * (len(shape) - len(layout.axes))
    if len(axes) != len(shape):
        raise ValueError(
            f"A layout must have one axis per dimension of the variable. Received: "
            f"axes={tuple(layout.axes)} for shape={tuple(shape)}"
        )
    fitted = tuple(
        axis if axis is None or dim % sizes[axis] == 0 else None for axis, dim in zip(axes, shape)
    )
    if fitted == tuple(layout.axes):
        return layout
    return keras.distribution.TensorLayout(fitted, mesh)


def distribution_from_config(
    config: dict | None,
    devices: list | None = None,
    lora: str = "sharded",
) -> keras.distribution.Distribution | None:
    """The distribution a training config's `distribution:` section asks for.

    Args:
        config: `{"data": N, "model": M}` (a missing key is 1); `N * M` must be
            the number of devices. None or `{}`: no distribution (None).
        devices: the devices (default `keras.distribution.list_devices()`).
        lora: LoRA's layout (`layout_map`'s `lora`).

    Returns:
        `keras.distribution.DataParallel` for `model: 1` (every variable
        replicated), else a `GemmaModelParallel` over a `(data, model)` mesh with
        `layout_map`; None for no distribution. Enter it with `.scope()` (or
        `keras.distribution.set_distribution`) before building the model.

    Raises:
        RuntimeError: under a backend other than JAX.
        ValueError: for unknown keys, sizes that are not positive integers, or
            a mesh that does not match the device count.
    """
    if not config:
        return None
    _check_jax("`distribution_from_config`")
    if not isinstance(config, dict) or set(config) - {"data", "model"}:
        raise ValueError(
            "`distribution` must be a mapping with keys `data` and/or `model` (mesh sizes). "
            f"Received: distribution={config!r}"
        )
    sizes = {axis: config.get(axis, 1) for axis in ("data", "model")}
    for axis, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(
                f"`distribution.{axis}` must be a positive integer. Received: {axis}={size!r}"
            )
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    if sizes["data"] * sizes["model"] != len(devices):
        raise ValueError(
            f"`distribution` must use every device: data x model = "
            f"{sizes['data']} x {sizes['model']} = {sizes['data'] * sizes['model']}, but "
            f"{len(devices)} devices are available. Received: distribution={config!r}"
        )
    if sizes["model"] == 1:
        # DataParallel wants a 1-D mesh (Keras 3.15 fails formatting its warning for a 2-D one).
        mesh = keras.distribution.DeviceMesh(
            shape=(sizes["data"],), axis_names=(DATA_AXIS,), devices=devices
        )
        return keras.distribution.DataParallel(device_mesh=mesh)
    mesh = keras.distribution.DeviceMesh(
        shape=(sizes["data"], sizes["model"]), axis_names=(DATA_AXIS, MODEL_AXIS), devices=devices
    )
    return GemmaModelParallel(layout_map=layout_map(mesh, lora=lora), batch_dim_name=DATA_AXIS)


def distribute_model(model: keras.Model, distribution: Any = None) -> dict[str, tuple]:
    """Places every variable of `model` (and its built optimizer) as `distribution` says.

    For a model built, loaded or adapted outside the distribution's scope (a
    variable created inside already has its layout; it is placed again from its
    current path, which is then a no-op). Call it before `compile` / `fit`, or
    after: the optimizer's variables follow their model variables.

    Args:
        model: a Keras model.
        distribution: default the current one (`keras.distribution.distribution()`).

    Returns:
        `{variable.path: sharding axes}` of the model's variables (empty with
        no distribution).
    """
    distribution = distribution or keras.distribution.distribution()
    if distribution is None:
        return {}
    _check_jax("`distribute_model`")
    placed = {}
    for variable in model.variables:
        placed[variable.path] = _place(variable, distribution)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        for variable in optimizer.variables:
            _place(variable, distribution, reference=_slot_reference(variable, model))
    return placed


def _slot_reference(slot, model):
    """The model variable an optimizer slot (same shape, path ending with its name) belongs to."""
    for variable in model.trainable_variables:
        name = variable.path.replace("/", "_")
        if tuple(variable.shape) == tuple(slot.shape) and name in slot.path:
            return variable
    return None


def _place(variable, distribution, reference=None):
    """Lays `variable` out as `distribution` (or `reference`'s layout) says; returns the axes."""
    if reference is not None:
        layout = reference._layout
    else:
        # Keras 3.15 (`keras/src/backend/jax/core.py`): a variable keeps the
        # layout chosen at creation in `_layout`, and `_direct_assign` moves its
        # value onto that layout; clear it so the distribution decides again.
        variable._layout = None
        layout = distribution.get_variable_layout(variable)
    if layout is None:
        layout = keras.distribution.TensorLayout([None] * len(variable.shape),
                                                 distribution.device_mesh)
    variable._layout = layout
    variable._direct_assign(variable.value)
    return tuple(layout.axes)


def variable_shardings(model: keras.Model) -> dict[str, tuple]:
    """`{variable.path: partition spec}` of a model's variables as JAX holds them now.

    A dimension's entry is its mesh axis name, or None where it is not split;
    single-device arrays read as all None.
    """
    _check_jax("`variable_shardings`")
    shardings = {}
    for variable in model.variables:
        sharding = variable.value.sharding
        spec = tuple(getattr(sharding, "spec", ()) or ())
        spec = spec + (None,) * (len(variable.shape) - len(spec))
        shardings[variable.path] = spec
    return shardings


def sharded_fraction(model: keras.Model) -> float:
    """The fraction of a model's variable bytes that one device holds (1.0: all replicated)."""
    held = total = 0
    for variable in model.variables:
        value = variable.value
        size = math.prod(variable.shape) * value.dtype.itemsize
        shards = value.sharding.shard_shape(value.shape)
        held += math.prod(shards) * value.dtype.itemsize
        total += size
    return held / max(total, 1)
