"""Feeding token-id batches to a keras-hub task that has a preprocessor.

Two ways in:

- `model.fit(batches)` / `evaluate` / `predict` with a kerasft batch object
  (`kerasft.data.SequenceBatches`, `kerasft.losses.TokenNormalizedBatches`,
  or anything with a true `kerasft_token_batches` attribute) as `x` or as
  `validation_data`: on a keras-hub task this runs as if inside
  `pretokenized(model)`, with no call of the user's (installed on
  `keras_hub.models.Task` when kerasft is imported, see `_install`);
- `with kerasft.pretokenized(model): ...` for everything else that is already
  token ids (numpy arrays, other PyDatasets).

Packed rows carry `x["segment_ids"]` (`kerasft.data.instruction_batches(
pack=True)`, `packed_text_batches`). A keras-hub causal LM reads only
`token_ids` and `padding_mask`, and Keras drops any other key of its input
with no more than a warning, so attention would silently cross the packed
examples. Such input is therefore refused here, naming the fix, unless the
model runs packed rows per document (`kerasft.training_forward`, installed by
a kerasft recipe's `compile`).
"""

import contextlib
import functools
import inspect
import types

import keras

# keras-hub (0.32, `keras_hub/src/utils/pipeline_model.py`) overrides these
# to run the preprocessor and turn numpy input into an unshuffled tf.data
# pipeline (`shuffle=True` is then ignored, and Keras's tf.data adapter was
# seen to sit idle 35-60 s after the last batch on 2 cores).
_BYPASSED_METHODS = (
    "fit",
    "evaluate",
    "predict",
    "train_on_batch",
    "test_on_batch",
    "predict_on_batch",
)
# The methods that take a whole dataset, so a batch object as their `x`.
_DISPATCHED_METHODS = ("fit", "evaluate", "predict")
# Set on the dispatching wrappers below: the keras-hub method each replaces.
_WRAPPED = "_kerasft_keras_hub_method"


def is_token_batches(data) -> bool:
    """Whether `data` is a kerasft batch object of token ids.

    Such objects (`SequenceBatches`, `TokenNormalizedBatches`) carry the class
    attribute `kerasft_token_batches = True`: they already hold token ids,
    sample weights and their own seeded per-epoch order, so keras-hub's
    preprocessing and Keras's batch-index shuffling must both leave them alone.
    """
    return getattr(data, "kerasft_token_batches", False) is True


def _fit(model, x=None, y=None, *args, **kwargs):
    """`keras.Model.fit`, leaving a PyDataset's batches in its own order by default."""
    # Keras shuffles a PyDataset's batch indices when shuffle=True (its
    # default) with Python's global RNG. kerasft batch objects draw their own
    # seeded order per epoch (the same on every backend), and
    # TokenNormalizedBatches needs consecutive batches to form one step, so
    # that shuffle is always off for them; other PyDatasets only default to it.
    if is_token_batches(x) and len(args) < 7:
        kwargs["shuffle"] = False
    elif isinstance(x, keras.utils.PyDataset) and "shuffle" not in kwargs and len(args) < 7:
        kwargs["shuffle"] = False
    return keras.Model.fit(model, x, y, *args, **kwargs)


def _carries_segment_ids(data) -> bool:
    """Whether `data` (a dict, an `(x, ...)` tuple or a kerasft batch object) holds segment ids."""
    if isinstance(data, dict):
        return "segment_ids" in data
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], dict):
        return "segment_ids" in data[0]
    if is_token_batches(data):
        known = getattr(data, "has_segment_ids", None)
        if known is not None:
            return bool(known)
        # Other kerasft batch objects (TokenNormalizedBatches) wrap batches: look at one.
        return len(data) > 0 and _carries_segment_ids(data[0])
    return False


def check_segment_ids(model, data, argument: str = "x") -> None:
    """Refuses packed rows (`x["segment_ids"]`) that `model` would read without them.

    Args:
        model: the model about to be fed `data`.
        data: a dict of inputs, an `(x, y, sample_weight)` tuple or a kerasft
            batch object.
        argument: the name of the argument `data` came in, for the message.

    Raises:
        ValueError: if `data` carries segment ids and `model` is a keras-hub
            model without `kerasft.training_forward` installed.
    """
    from kerasft import training_forward

    if not _carries_segment_ids(data) or training_forward.is_installed(model):
        return
    if not any(cls.__module__.startswith("keras_hub") for cls in type(model).__mro__):
        return  # a plain keras.Model may take segment ids as an input of its own
    raise ValueError(
        f"`{argument}` holds packed rows (x['segment_ids']), which this model would drop "
        "silently, letting attention cross the packed examples. Compile it with a kerasft "
        "recipe (`recipe.compile(model)`, default loss; or call "
        "`kerasft.training_forward.install(model)` after `model.compile`), which runs packed "
        "rows per document, or build the batches unpacked (`pack=False`) or with "
        "`cross_attention=True`. Received: model of type "
        f"{type(model).__name__} without kerasft.training_forward"
    )


def _keras_method(name):
    method = _fit if name == "fit" else getattr(keras.Model, name)
    signature = inspect.signature(getattr(keras.Model, name))

    @functools.wraps(method)
    def checked(model, *args, **kwargs):
        arguments = signature.bind(model, *args, **kwargs).arguments
        for argument in ("x", "validation_data"):
            check_segment_ids(model, arguments.get(argument), argument)
        return method(model, *args, **kwargs)

    return checked


def _overridden_by_keras_hub(model, name):
    method = getattr(type(model), name, None)
    method = getattr(method, _WRAPPED, method)
    return getattr(method, "__module__", "").startswith("keras_hub")


@contextlib.contextmanager
def pretokenized(model: keras.Model):
    """Feeds token-id batches to `model` as they are, inside the block.

    Inside the block `model.preprocessor` is detached and `fit`, `evaluate`,
    `predict` (and the `*_on_batch` methods) are Keras's own
    (`keras.Model.fit`, ...) instead of keras-hub's overrides, which would
    preprocess and convert everything to `tf.data`. So:

    - numpy input with `shuffle=True` (Keras's default) is shuffled again
      every epoch. Keras draws that order from the global NumPy RNG on JAX
      and from torch's global RNG on PyTorch, both seeded by
      `keras.utils.set_random_seed(seed)` (the orders differ between
      backends);
    - a `kerasft.data.SequenceBatches` follows its own order,
      `numpy.random.default_rng([seed, epoch])` for its own `seed`, the same
      on every backend (Keras's batch-index shuffling is off for kerasft
      batch objects, whatever `shuffle=` says, and defaults to off for any
      other `keras.utils.PyDataset`: it would break the optimizer steps of
      `kerasft.losses.TokenNormalizedBatches`).

    kerasft batch objects need no block: `model.fit(batches)` enters one by
    itself (see `is_token_batches`).

    `generate` needs the preprocessor and keras-hub's methods, so both are
    restored on exit, also after an error. Blocks may nest.

        with kerasft.pretokenized(model):
            model.fit(x, y, sample_weight=w, epochs=2)
        model.generate("Define the word apple.")

    Args:
        model: a keras-hub task (e.g. `Gemma3CausalLM`) or any `keras.Model`.

    Yields:
        `model`.
    """
    preprocessor = getattr(model, "preprocessor", None)
    model.preprocessor = None
    bypassed = []
    for name in _BYPASSED_METHODS:
        if name in vars(model) or not _overridden_by_keras_hub(model, name):
            continue  # an outer block already bypasses it, or nothing to bypass
        # object.__setattr__ keeps the bound method out of Keras's tracking.
        object.__setattr__(model, name, types.MethodType(_keras_method(name), model))
        bypassed.append(name)
    try:
        yield model
    finally:
        for name in bypassed:
            object.__delattr__(model, name)
        model.preprocessor = preprocessor


def _dispatching(name, keras_hub_method):
    """`keras_hub_method`, or Keras's own inside `pretokenized` for kerasft batch objects."""
    signature = inspect.signature(keras_hub_method)

    @functools.wraps(keras_hub_method)
    def method(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self")
        arguments.update(arguments.pop("kwargs", {}))
        feeds = [arguments.get("x"), arguments.get("validation_data")]
        if not any(is_token_batches(data) for data in feeds):
            return keras_hub_method(self, *args, **kwargs)
        # keras-hub's positional order differs from Keras's (`sample_weight`
        # is 4th), so everything goes on by name.
        with pretokenized(self):
            return getattr(self, name)(**arguments)

    setattr(method, _WRAPPED, keras_hub_method)
    return method


def _install():
    """Lets keras-hub tasks take kerasft batch objects in `fit`/`evaluate`/`predict`.

    keras-hub 0.32's `PipelineModel` (`keras_hub/src/utils/pipeline_model.py`,
    inherited by every `keras_hub.models.Task`) hands any `x` that is not a
    `tf.data` or grain dataset to `tf.data.Dataset.from_tensor_slices`, which
    fails on a `keras.utils.PyDataset`. The wrapper changes nothing for other
    input; idempotent.
    """
    try:
        import keras_hub
    except ImportError:  # kerasft without keras-hub: nothing to wrap
        return
    task = keras_hub.models.Task
    for name in _DISPATCHED_METHODS:
        method = getattr(task, name)
        if hasattr(method, _WRAPPED):
            continue
        setattr(task, name, _dispatching(name, method))


_install()
