import numpy as np
import pytest

from kerasft import testing
from kerasft.adapters import load_adapter, save_adapter
from kerasft.layers.prefix import prefix_wrappers
from kerasft.recipes import PromptTuning, PTuning
from kerasft.recipes.base import applied_recipe_config, recipe_from_config
from tests.conftest import to_numpy, weights_by_path

D = 16  # width of the tiny models


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def lstm_count(inputs, units):
    return 4 * (inputs * units + units * units + units)


@pytest.mark.parametrize("recipe,expected", [
    (PromptTuning(5), 5 * D),
    (PTuning(5, encoder="mlp", hidden=8), 5 * D + (D * 8 + 8) + (8 * 8 + 8) + (8 * D + D)),
    (PTuning(5, encoder="lstm", hidden=8),
     5 * D + 2 * lstm_count(D, 8) + (16 * 8 + 8) + (8 * D + D)),
])
def test_trainable_parameter_counts(recipe, expected):
    model = testing.tiny_causal_lm("gemma3")
    recipe.apply(model)
    assert trainable_count(model) == expected


def test_soft_prompt_equals_prepending_its_embeddings(batch):
    """The logits of the real tokens equal those of a model fed the virtual
    embeddings first (checked through `vocab` init: rows of real tokens)."""
    model = testing.tiny_causal_lm("gemma")
    recipe = PromptTuning(3, init="vocab", seed=1)
    ids = recipe._init_ids(model)
    tokens = np.array([[4, 9, 30, 2, 50]], "int32")
    full = {"token_ids": np.concatenate([np.array([ids], "int32"), tokens], 1),
            "padding_mask": np.ones((1, 8), bool)}
    expected = to_numpy(model(full))[:, 3:]
    recipe.apply(model)
    got = to_numpy(model({"token_ids": tokens, "padding_mask": np.ones((1, 5), bool)}))
    assert got.shape == (1, 5, testing.TINY_VOCABULARY_SIZE)
    np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.parametrize("model_kind,recipe", [
    ("gemma", PromptTuning(4, init="vocab")),
    pytest.param("gemma3", PTuning(4, hidden=16), marks=pytest.mark.slow),
    pytest.param("gemma", PTuning(4, encoder="lstm", hidden=8), marks=pytest.mark.slow),
    pytest.param("gemma3", PromptTuning(4), marks=pytest.mark.slow),
], ids=["prompt_tuning-gemma", "ptuning-gemma3", "ptuning_lstm-gemma", "prompt_tuning-gemma3"])
def test_fit_save_reload_fold_and_generate(model_kind, recipe, batch, tmp_path):
    model = testing.tiny_causal_lm(model_kind)
    x, y, w = batch
    recipe.apply(model)
    trained = {v.path for v in model.trainable_weights}
    before = weights_by_path(model)
    recipe.compile(model, learning_rate=3e-2, sampler="greedy")
    losses = model.fit(x, y, sample_weight=w, batch_size=4, epochs=5, verbose=0).history["loss"]
    assert losses[-1] < losses[0] - 0.02
    after = weights_by_path(model)
    for path, value in before.items():
        if path in trained:
            assert not np.array_equal(after[path], value), f"{path} did not train"
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=path)
    expected = to_numpy(model(x))
    save_adapter(model, tmp_path / "soft")
    reloaded = load_adapter(testing.tiny_causal_lm(model_kind), tmp_path / "soft")
    np.testing.assert_allclose(to_numpy(reloaded(x)), expected, atol=1e-6)

    recipe.merge(model)  # per-layer keys/values of the prompt, exact
    assert applied_recipe_config(model)["method"] == "prefix_tuning"
    assert all(w.provider is None for w in prefix_wrappers(model))
    np.testing.assert_allclose(to_numpy(model(x)), expected, atol=1e-5)
    if model_kind == "gemma":  # Gemma3CausalLM.generate needs a preprocessor
        prompt = {"token_ids": np.array([[2, 5, 6, 7, 0, 0]], "int32"),
                  "padding_mask": np.array([[1, 1, 1, 1, 0, 0]], bool)}
        tokens = to_numpy(model.generate(prompt, stop_token_ids=None)["token_ids"])
        full = {"token_ids": tokens[:, :4], "padding_mask": np.ones((1, 4), bool)}
        assert tokens[0, 4] == int(np.argmax(to_numpy(model(full))[0, -1]))


def test_text_init_uses_the_text_tokens():
    from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer

    tokenizer = tiny_gemma_tokenizer()
    model = testing.tiny_causal_lm("gemma")
    recipe = PromptTuning(6, init="Define the word cat.", tokenizer=tokenizer)
    ids = [i % testing.TINY_VOCABULARY_SIZE for i in recipe._init_ids(model)]
    recipe = PromptTuning(6, init="text", init_token_ids=ids)
    recipe.apply(model)
    table = to_numpy(model.backbone.token_embedding.embeddings)
    provider = prefix_wrappers(model)[0].provider
    np.testing.assert_array_equal(to_numpy(provider.embeddings), table[ids])
    config = applied_recipe_config(model)
    assert config["init_token_ids"] == ids
    assert recipe_from_config(config).get_config() == config


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="num_virtual_tokens=0"):
        PromptTuning(0)
    with pytest.raises(ValueError, match="encoder='gru'"):
        PTuning(3, encoder="gru")
    with pytest.raises(ValueError, match="tokenizer=None"):
        PromptTuning(3, init="hello").apply(testing.tiny_causal_lm("gemma"))
