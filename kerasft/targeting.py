"""Finding the layers a recipe changes, and swapping them inside a model.

A target is one of:
- a layer name, matched against the last component of `layer.path`
  (`"query"` matches `decoder_block_3/attention/query`);
- a glob (recognised by a `/` or a glob character) on the layer name
  (`"ffw_*"`) or on the whole `layer.path` (`"decoder_block_1*/attention/value"`);
- a shortcut: `"attention"`, `"mlp"` or `"all-linear"`.
"""

import contextlib
import fnmatch

import keras

ATTENTION_NAMES = ("query", "key", "value", "attention_output")
MLP_NAMES = ("ffw_gating", "ffw_gating_2", "ffw_linear")
SHORTCUTS = {
    "attention": ATTENTION_NAMES,
    "mlp": MLP_NAMES,
    "all-linear": None,  # every dense-like layer
}
_GLOB_CHARACTERS = set("*?[")


def is_dense_like(layer):
    """Whether a layer has a kernel an adapter can wrap or quantize."""
    if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
        return True
    return hasattr(layer, "equation") and hasattr(layer, "dequantized_kernel")


def normalize_targets(targets):
    """Returns targets as a tuple of strings; one string is one target."""
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(
            "`targets` must be a non-empty list of layer names, path globs or "
            f"shortcuts {sorted(SHORTCUTS)}. Received: targets={targets!r}"
        )
    return targets


def path_matches(path, target):
    """Whether `path` is selected by one target (name, glob or shortcut).

    A shortcut selects its layer names; any other target matches the layer
    name (the last component of `path`) exactly or as a glob (`"ffw_*"`), or
    the whole path as a glob (`"decoder_block_1*"`, `"*/attention/value"`).
    """
    name = path.rsplit("/", 1)[-1]
    if target in SHORTCUTS:
        names = SHORTCUTS[target]
        return names is None or name in names
    if name == target:
        return True
    if "/" in target or _GLOB_CHARACTERS & set(target):
        return fnmatch.fnmatchcase(name, target) or fnmatch.fnmatchcase(path, target)
    return False


def iter_layers(model, include_self=False):
    """Every layer under `model` (and `model` itself with `include_self`), each once."""
    return model._flatten_layers(include_self=include_self)


def kernel_variable(layer):
    """The float kernel variable of a `Dense` / `EinsumDense` layer.

    Keras 3.15's `kernel` property answers with a LoRA-adjusted or
    quantized value when Keras's own LoRA or quantization is on; the stored
    variable is `_kernel`.
    """
    return layer._kernel


def place_under(layer, parent_path):
    """Makes `layer` create its variables under `parent_path` when it builds next.

    A layer built outside its parent's `call` (a wrapper, a replacement made
    after the model was built) otherwise gets paths from its name alone;
    Keras 3.15 opens the build name scope under `_parent_path`.
    """
    layer._parent_path = parent_path
    return layer


def build_input_shape(layer):
    """The input shape a built layer was built with (Keras 3.15's `_build_shapes_dict`), or None."""
    return getattr(layer, "_build_shapes_dict", {}).get("input_shape")


def parent_path(path):
    """`"a/b/c"` -> `"a/b"`; `""` for a top-level path."""
    return path.rpartition("/")[0]


def adapter_wrappers(model, cls=None):
    """Every `AdapterWrapper` (or `cls` instance) in `model`, in model order."""
    from kerasft.layers.wrapper import AdapterWrapper

    cls = cls or AdapterWrapper
    return [layer for layer in iter_layers(model) if isinstance(layer, cls)]


def dense_layers(model):
    """`{path: layer}` for every dense-like layer in the model, wrapped ones skipped."""
    wrapped_inner = {id(wrapper.layer) for wrapper in adapter_wrappers(model)}
    return {
        layer.path: layer
        for layer in iter_layers(model)
        if is_dense_like(layer) and layer.path and id(layer) not in wrapped_inner
    }


def find_target_layers(model, targets):
    """Selects dense-like layers by target.

    Args:
        model: a Keras model, e.g. a keras-hub `CausalLM`.
        targets: names, path globs or shortcuts.

    Returns:
        A dict `{path: layer}` in model order.

    Raises:
        ValueError: if a selected layer already carries an adapter (naming
            the recipe that put it there and the paths), or if no layer
            matches, naming the targets and listing the dense layer paths
            that exist.
    """
    targets = normalize_targets(targets)
    check_not_wrapped(model, targets)
    candidates = dense_layers(model)
    selected = {
        path: layer
        for path, layer in candidates.items()
        if any(path_matches(path, t) for t in targets)
    }
    if not selected:
        raise ValueError(
            f"No layer matches `targets`. Received: targets={list(targets)!r}. "
            f"Dense layer paths in this model: {sorted(candidates)}"
        )
    return selected


def check_not_wrapped(model: keras.Model, targets: tuple[str, ...]) -> None:
    """Raises a ValueError if `targets` select a dense layer that already carries an adapter.

    Checked before the plain match (which skips wrapped layers), so that a
    second recipe on the same layers is told why, not "No layer matches".
    """
    already = {}
    for wrapper in adapter_wrappers(model):
        if is_dense_like(wrapper.layer) and any(path_matches(wrapper.target_path, t) for t in targets):
            label = f"recipe {wrapper.applied_by}" if wrapper.applied_by else "no recorded recipe"
            already.setdefault(f"{type(wrapper).__name__}, {label}", []).append(wrapper.target_path)
    if already:
        found = "; ".join(f"{label} at paths {sorted(paths)}" for label, paths in already.items())
        raise ValueError(
            "These layers already carry an adapter; merge it (`kerasft.merge_adapters`) "
            "or give targets that do not overlap. Received: "
            f"targets={list(targets)!r} matching layers wrapped by {found}"
        )


def find_parent(model, layer):
    """Returns `(parent, attribute_name)` holding `layer` as an attribute."""
    for parent in iter_layers(model, include_self=True):
        for name, value in held_layers(parent).items():
            if value is layer and not name.startswith("_"):
                return parent, name
    raise ValueError(
        f"Cannot find the attribute that holds layer {layer.path!r}, so it "
        "cannot be replaced. Received: a layer that no parent layer stores as "
        "a public attribute."
    )


@contextlib.contextmanager
def unlocked_tracker(layer):
    """Yields `layer._tracker` unlocked (so tracked attributes can change), then relocks it."""
    tracker = layer._tracker
    was_locked = tracker.locked
    tracker.unlock()
    try:
        yield tracker
    finally:
        if was_locked:
            tracker.lock()


def replace_layer(model, old, new):
    """Puts `new` where `old` was inside `model`, keeping tracking order."""
    parent, name = find_parent(model, old)
    tracked = parent._layers
    index = next(i for i, layer in enumerate(tracked) if layer is old)
    with unlocked_tracker(parent) as tracker:
        tracker.untrack(old)
        setattr(parent, name, new)
    # `setattr` tracked `new` by appending it; move it to `old`'s slot so
    # variable order (and so optimizer and checkpoint order) stays stable.
    for i in reversed(range(len(tracked))):
        if tracked[i] is new:
            del tracked[i]
    tracked.insert(index, new)
    return parent


def replace_attribute(parent, attribute, old, new):
    """Replaces `parent.<attribute>` (tracked as `old`) by `new`, keeping layer order.

    The new layer takes the old one's slot in `parent._layers`, so the old
    layer's variables are no longer part of the model.
    """
    with unlocked_tracker(parent) as tracker:
        if tracker.is_in_store("layers", old):
            tracker.replace_tracked_value("layers", old, new)
        setattr(parent, attribute, new)


def replace_in_graphs(model, old, new):
    """Points every functional graph inside `model` that calls `old` at `new`.

    A functional model (a keras-hub backbone, a task built on it) calls its
    layers through the nodes recorded when it was built, not through
    attributes, so `replace_layer` alone does not reroute it.

    Returns:
        The number of graph nodes changed.
    """
    changed = 0
    for layer in model._flatten_layers(include_self=True):
        if not hasattr(layer, "_nodes_by_depth"):
            continue
        for nodes in layer._nodes_by_depth.values():
            for node in nodes:
                if node.operation is old:
                    node.operation = new
                    changed += 1
        with unlocked_tracker(layer) as tracker:
            if tracker.is_in_store("layers", old):
                tracker.replace_tracked_value("layers", old, new)
        layer._operations = [new if op is old else op for op in layer._operations]
        for depth, operations in layer._operations_by_depth.items():
            layer._operations_by_depth[depth] = [new if op is old else op for op in operations]
    return changed


def refresh_after_surgery(model):
    """Resets cached train/predict/generate functions and torch parameter lists.

    Compiled functions capture the variable list they were traced with, and the
    torch backend keeps a `ParameterDict` per layer built at build time; both
    are stale once layers are swapped.
    """
    for attr in ("train_function", "test_function", "predict_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "generate_function"):
        model.generate_function = None
    if keras.backend.backend() == "torch":
        for layer in model._flatten_layers(include_self=True):
            if hasattr(layer, "_torch_params"):
                layer._track_variables()


def wrap_layers(model, targets, make_wrapper):
    """Wraps every dense-like layer selected by `targets` in place.

    Args:
        model: the model to change.
        targets: names, path globs or shortcuts (see `find_target_layers`).
        make_wrapper: `(path, layer) -> AdapterWrapper`.

    Returns:
        The list of wrappers, in model order.

    Raises:
        ValueError: if a selected layer already carries an adapter, or if no
            layer matches.
    """
    wrappers = []
    for path, layer in find_target_layers(model, targets).items():
        wrapper = make_wrapper(path, layer)
        # Variables are created now (not at the first call) so that a jitted
        # train step sees them, under the wrapped layer's parent path.
        wrapper._parent_path = path.rpartition("/")[0]
        wrapper.build()
        replace_layer(model, layer, wrapper)
        wrappers.append(wrapper)
    refresh_after_surgery(model)
    return wrappers


def sublayers_in_order(layer):
    """Every layer under `layer`, depth first in tracking (creation) order.

    `iter_layers` (Keras's `_flatten_layers`) is breadth first.
    """
    ordered = []
    for child in layer._layers:
        ordered.append(child)
        ordered.extend(sublayers_in_order(child))
    return ordered


def held_layers(layer):
    """`{attribute: layer}` of every attribute of `layer` that holds a layer."""
    attributes = {**vars(layer), **vars(layer).get("_modules", {})}  # torch: `_modules`
    return {
        name: value for name, value in attributes.items()
        if isinstance(value, keras.layers.Layer) and name != "_tracker"
    }


@contextlib.contextmanager
def undo_surgery_on_error(model: keras.Model):
    """Puts `model`'s layers and trainable flags back if the body raises.

    Records, for every layer under `model`, the layers its attributes hold,
    its tracked stores (sub-layers, variables), the operations of its
    functional graph and its trainable flag, plus every variable's
    trainable flag; on an exception, restores them all and re-raises.
    Variable values are not recorded: the body must assign into existing
    variables only once nothing can fail any more.
    """
    layers = list(model._flatten_layers(include_self=True))
    attributes = [(layer, held_layers(layer)) for layer in layers]
    stores = [
        (layer, {name: (list(store), set(layer._tracker.stored_ids[name]))
                 for name, (_, store) in layer._tracker.config.items()})
        for layer in layers if hasattr(layer, "_tracker")
    ]
    graphs = []
    for layer in layers:
        if hasattr(layer, "_nodes_by_depth"):
            nodes = [(node, node.operation) for group in layer._nodes_by_depth.values() for node in group]
            by_depth = {depth: list(ops) for depth, ops in layer._operations_by_depth.items()}
            graphs.append((layer, nodes, list(layer._operations), by_depth))
    layer_flags = [(layer, layer._trainable) for layer in layers]
    variable_flags = [(variable, variable.trainable) for variable in model.variables]
    try:
        yield
    except BaseException:
        for layer, held in attributes:
            with unlocked_tracker(layer):
                for name, value in held.items():
                    if getattr(layer, name, None) is not value:
                        setattr(layer, name, value)
        for layer, saved in stores:
            for name, (values, ids) in saved.items():
                store = layer._tracker.config[name][1]
                store[:] = values
                layer._tracker.stored_ids[name] = ids
        for layer, nodes, operations, by_depth in graphs:
            for node, operation in nodes:
                node.operation = operation
            layer._operations = operations
            layer._operations_by_depth = by_depth
        for layer, flag in layer_flags:
            layer._trainable = flag
        for variable, flag in variable_flags:
            variable.trainable = flag
        refresh_after_surgery(model)
        raise
