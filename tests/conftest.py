import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kerasft import testing  # noqa: E402


@pytest.fixture(params=["gemma", "gemma3"])
def model_kind(request):
    return request.param


@pytest.fixture
def batch():
    return testing.random_token_batch()


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def weights_by_path(model):
    """`{variable.path: numpy copy}` of every weight."""
    return {v.path: to_numpy(v).copy() for v in model.weights}
