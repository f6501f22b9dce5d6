"""Build a Keras model without running its random initializers.

Loading a checkpoint into a freshly built keras-hub model normally draws random
values for every weight (for Gemma 3 270M, ~170M numbers, and on JAX one XLA
compilation per weight shape) only to overwrite them. Keras already defers
initialization of variables created inside a `keras.StatelessScope` (that is
how it builds models symbolically); these helpers use that to initialize each
variable once, straight from the checkpoint value:

    model, deferred = build_deferred(lambda: Backbone(**config))
    try:
        for variable, value in checkpoint_values(model):
            initialize_from(variable, value)
    finally:
        finish_deferred(deferred)  # anything not loaded gets its initializer

They rely on Keras internals (`Variable._value`, `_initializer`,
`_deferred_initialize` and the global "uninitialized_variables" list), stable
across Keras 3 and pinned by `keras>=3.15,<3.16`; the GGUF round-trip tests
exercise them on JAX and PyTorch.
"""

_UNINITIALIZED = "uninitialized_variables"  # Keras's list of deferred variables


def build_deferred(build):
    """Calls `build()` with variable initialization deferred.

    Args:
        build: A function without arguments that creates the model.

    Returns:
        `(result, deferred)`: what `build()` returned and the list of variables
        it created, still uninitialized. Pass each to `initialize_from`, then
        the list to `finish_deferred`.
    """
    import keras
    from keras.src.backend.common import global_state

    before = len(global_state.get_global_attribute(_UNINITIALIZED, [], set_to_default=True))
    with keras.StatelessScope(initialize_variables=False):
        result = build()
    return result, list(global_state.get_global_attribute(_UNINITIALIZED)[before:])


def initialize_from(variable, value):
    """Sets a variable, initializing it with `value` if it is still deferred.

    Args:
        variable: A `keras.Variable`, deferred or already initialized.
        value: An array of the variable's shape; cast to its dtype.
    """
    import keras

    if variable._value is not None:
        variable.assign(value)
        return
    value = keras.ops.convert_to_tensor(value, dtype=variable.dtype)
    variable._initializer = lambda shape, dtype: value
    variable._deferred_initialize()


def finish_deferred(deferred):
    """Initializes what is left of `deferred` normally and unregisters it.

    Args:
        deferred: The list `build_deferred` returned.
    """
    from keras.src.backend.common import global_state

    for variable in deferred:
        if variable._value is None:
            variable._deferred_initialize()
    ids = {id(variable) for variable in deferred}
    remaining = global_state.get_global_attribute(_UNINITIALIZED, [])
    global_state.set_global_attribute(
        _UNINITIALIZED, [v for v in remaining if id(v) not in ids]
    )
