import numpy as np
import pytest

from kerasft import testing
from kerasft.recipes import Freeze, FullFineTune, LoRA
from tests.conftest import weights_by_path


def test_freeze_trains_only_the_last_block(model_kind, batch):
    model = testing.tiny_causal_lm(model_kind)
    recipe = Freeze(trainable=[-1])
    recipe.apply(model)
    trainable = {v.path for v in model.trainable_weights}
    assert trainable and all(p.startswith("decoder_block_1/") for p in trainable)
    before = weights_by_path(model)
    recipe.compile(model, learning_rate=1e-2)
    x, y, w = batch
    model.fit(x, y, sample_weight=w, batch_size=4, epochs=2, verbose=0)
    after = weights_by_path(model)
    for path, value in before.items():
        if path in trainable:
            assert not np.array_equal(after[path], value), path
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=path)


def test_freeze_by_path_pattern():
    model = testing.tiny_causal_lm("gemma3")
    Freeze(trainable=["decoder_block_0/attention", "final_normalization"]).apply(model)
    paths = {v.path for v in model.trainable_weights}
    assert "final_normalization/scale" in paths
    assert "decoder_block_0/attention/query/kernel" in paths
    assert not any(p.startswith("decoder_block_1") or "ffw" in p for p in paths)


@pytest.mark.parametrize(
    "trainable,message", [([], r"trainable=\[\]"), ([7], "7"), (["nothing_here"], "nothing_here")]
)
def test_freeze_bad_targets(trainable, message):
    model = testing.tiny_causal_lm("gemma")
    with pytest.raises(ValueError, match=message):
        Freeze(trainable=trainable).apply(model)


def test_full_fine_tune_unfreezes_everything_after_lora():
    model = testing.tiny_causal_lm("gemma3")
    total = len(model.trainable_weights)
    LoRA().apply(model)
    FullFineTune().apply(model)
    base = [v for v in model.trainable_weights if "lora" not in v.path]
    assert len(base) == total


@pytest.mark.parametrize("trainable", [[True], True, [0, False]])
def test_freeze_rejects_booleans_in_trainable(trainable):
    # bool is an int subclass: True used to mean block 1.
    with pytest.raises(ValueError, match=r"`trainable` entries must be block indices .*Received: trainable="):
        Freeze(trainable=trainable)


def test_freeze_accepts_numpy_block_indices():
    model = testing.tiny_causal_lm("gemma3")
    recipe = Freeze(trainable=[np.int64(-1)])
    recipe.apply(model)
    assert recipe.get_config()["trainable"] == [-1] and type(recipe.get_config()["trainable"][0]) is int
    trainable = {v.path for v in model.trainable_weights}
    assert trainable and all(p.startswith("decoder_block_1/") for p in trainable)
