"""Feeding token-id batches to a keras-hub task that has a preprocessor."""

import contextlib
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


def _fit(model, x=None, y=None, *args, **kwargs):
    """`keras.Model.fit`, leaving a PyDataset's batches in its own order by default."""
    # Keras shuffles a PyDataset's batch indices when shuffle=True (its
    # default). SequenceBatches already draws a seeded order per epoch, and
    # TokenNormalizedBatches needs consecutive batches to form one step.
    if isinstance(x, keras.utils.PyDataset) and "shuffle" not in kwargs and len(args) < 7:
        kwargs["shuffle"] = False
    return keras.Model.fit(model, x, y, *args, **kwargs)


def _keras_method(name):
    return _fit if name == "fit" else getattr(keras.Model, name)


def _overridden_by_keras_hub(model, name):
    method = getattr(type(model), name, None)
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
    - a `kerasft.data.SequenceBatches` can be passed straight to
      `model.fit(batches)`: its order is `numpy.random.default_rng([seed,
      epoch])` for its own `seed`, the same on every backend. (For a
      `keras.utils.PyDataset`, `fit` defaults to `shuffle=False` here, which
      keeps the dataset's own order; Keras would otherwise shuffle the
      batch indices with Python's global RNG, which breaks the optimizer
      steps of `kerasft.losses.TokenNormalizedBatches`.)

    `generate` needs the preprocessor and keras-hub's methods, so both are
    restored on exit, also after an error. Blocks may nest.

        with kerasft.pretokenized(model):
            model.fit(batches, epochs=2)      # or model.fit(x, y, sample_weight=w)
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
