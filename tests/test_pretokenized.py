import numpy as np
import pytest

import kerasft
from kerasft import testing


class Marker:
    pass


def test_preprocessor_is_detached_inside_and_restored_after_an_error(batch):
    model = testing.tiny_causal_lm("gemma")
    marker = Marker()
    model.preprocessor = marker
    with pytest.raises(RuntimeError):
        with kerasft.pretokenized(model):
            assert model.preprocessor is None
            x, y, w = batch
            logs = model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True) if model.compiled else None
            raise RuntimeError("boom")
    assert model.preprocessor is marker
    assert logs is None or np.isfinite(logs["loss"])
