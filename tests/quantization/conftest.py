import numpy as np
import pytest


@pytest.fixture
def realistic_activations():
    """Rows with LLM-like input statistics: strongly correlated (a low-rank part),
    uneven channel scales and a few outlier channels.

    Returns a function `(rows, features, seed) -> (rows, features)` array.
    """

    def make(rows, features, seed=0):
        rng = np.random.default_rng(seed)
        scales = rng.lognormal(0.0, 1.0, features)
        scales[rng.choice(features, max(1, features // 32), replace=False)] *= 10.0
        latent = rng.normal(size=(rows, features // 4))
        basis = rng.normal(size=(features // 4, features)) / np.sqrt(features // 4)
        noise = 0.1 * rng.normal(size=(rows, features))
        return (latent @ basis + noise) * scales

    return make
