import numpy as np
import pytest

from kerasft import testing
from kerasft.adapters import load_adapter, save_adapter
from kerasft.recipes import PrefixTuning
from kerasft.recipes.base import applied_recipe_config, recipe_from_config
from tests.conftest import to_numpy, weights_by_path

L, KH, D = 2, 1 * 8, 16  # tiny models: 2 blocks, 1 kv head of width 8, width 16


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize("reparameterize,expected", [
    (False, L * 2 * 3 * KH),
    (True, 3 * D + D * 32 + 32 + 32 * L * 2 * KH + L * 2 * KH),
])
def test_trainable_parameter_counts(model_kind, reparameterize, expected):
    model = testing.tiny_causal_lm(model_kind)
    PrefixTuning(3, reparameterize=reparameterize, hidden=32).apply(model)
    assert trainable_count(model) == expected


@pytest.mark.parametrize("model_kind", ["gemma3", pytest.param("gemma", marks=pytest.mark.slow)])
def test_fit_trains_only_the_prefix_then_fold_and_reload_are_exact(model_kind, batch, tmp_path):
    model = testing.tiny_causal_lm(model_kind)
    x, y, w = batch
    recipe = PrefixTuning(4, reparameterize=True, hidden=32)
    recipe.apply(model)
    trained = {v.path for v in model.trainable_weights}
    before = weights_by_path(model)
    recipe.compile(model, learning_rate=3e-2)
    losses = model.fit(x, y, sample_weight=w, batch_size=4, epochs=5, verbose=0).history["loss"]
    assert losses[-1] < losses[0] - 0.02
    after = weights_by_path(model)
    for path, value in before.items():
        if path in trained:
            assert not np.array_equal(after[path], value), f"{path} did not train"
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=path)
    expected = to_numpy(model(x))
    save_adapter(model, tmp_path / "mlp")
    reloaded = load_adapter(testing.tiny_causal_lm(model_kind), tmp_path / "mlp")
    np.testing.assert_allclose(to_numpy(reloaded(x)), expected, atol=1e-6)

    recipe.merge(model)  # the MLP is replaced by its output
    assert trainable_count(model) == L * 2 * 4 * KH
    assert applied_recipe_config(model)["reparameterize"] is False
    np.testing.assert_allclose(to_numpy(model(x)), expected, atol=1e-6)
    save_adapter(model, tmp_path / "folded")
    reloaded = load_adapter(testing.tiny_causal_lm(model_kind), tmp_path / "folded")
    np.testing.assert_allclose(to_numpy(reloaded(x)), expected, atol=1e-6)


def test_zero_prefix_recipe_is_the_base_model(batch):
    model = testing.tiny_causal_lm("gemma3")
    x, _, _ = batch
    expected = to_numpy(model(x))
    PrefixTuning(0).apply(model)
    np.testing.assert_array_equal(to_numpy(model(x)), expected)
    assert trainable_count(model) == 0


def test_config_round_trip_and_bad_arguments():
    recipe = PrefixTuning(5, reparameterize=False, hidden=64)
    assert recipe_from_config(recipe.get_config()).get_config() == recipe.get_config()
    with pytest.raises(ValueError, match="num_virtual_tokens=-2"):
        PrefixTuning(-2)
    with pytest.raises(ValueError, match="hidden=0"):
        PrefixTuning(2, hidden=0)
    with pytest.raises(ValueError, match="CachedGemma"):
        PrefixTuning(2).apply(testing.tiny_gemma_backbone().token_embedding)
