import keras
import numpy as np
import pytest

import kerasft
from kerasft import testing
from kerasft.recipes import IA3, Adapters, LoRA, PrefixTuning, PromptTuning
from kerasft.recipes.qlora import QLoRA

RECIPES = {
    "lora": lambda: LoRA(rank=2, targets=["attention", "mlp"]),
    "dora": lambda: LoRA(rank=2, use_dora=True),
    "ia3": lambda: IA3(),
    "adapters": lambda: Adapters(),
    "prefix": lambda: PrefixTuning(num_virtual_tokens=3),
    "prompt": lambda: PromptTuning(num_virtual_tokens=3),
    "qlora": lambda: QLoRA(rank=2, quantization="int8", group_size=8),
}


def _perturb_trainable(model, seed=1):
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        variable.assign(variable.numpy() + rng.normal(0, 0.05, variable.shape).astype("float32"))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_disabled_adapters_give_the_base_model(name):
    model = testing.tiny_causal_lm("gemma3")
    x, _, _ = testing.random_token_batch()
    base = np.asarray(model.predict(x, verbose=0))
    recipe = RECIPES[name]()
    recipe.apply(model)
    _perturb_trainable(model)
    adapted = np.asarray(model.predict(x, verbose=0))
    # QLoRA's base is the quantized model, so it differs from the float base.
    reference = base
    if name == "qlora":
        for wrapper in kerasft.targeting.adapter_wrappers(model):
            wrapper.adapter_enabled = False
        kerasft.adapter_switch.reset_compiled_functions(model)
        reference = np.asarray(model.predict(x, verbose=0))
        for wrapper in kerasft.targeting.adapter_wrappers(model):
            wrapper.adapter_enabled = True
        kerasft.adapter_switch.reset_compiled_functions(model)
        assert np.abs(reference - base).max() < 0.1 * np.abs(base).max()
    assert np.abs(adapted - reference).max() > 1e-3
    with kerasft.adapters_disabled(model):
        inside = np.asarray(model.predict(x, verbose=0))
    after = np.asarray(model.predict(x, verbose=0))
    np.testing.assert_allclose(inside, reference, atol=1e-5)
    np.testing.assert_allclose(after, adapted, atol=1e-6)


def test_switch_inside_one_function_and_back_on_error():
    model = testing.tiny_causal_lm("gemma")
    x, _, _ = testing.random_token_batch()
    base = keras.ops.convert_to_numpy(model(x))
    LoRA(rank=2).apply(model)
    _perturb_trainable(model)
    adapted = keras.ops.convert_to_numpy(model(x))

    def both(inputs):
        with kerasft.adapters_disabled(model, reset_compiled=False):
            reference = model(inputs)
        return reference, model(inputs)

    reference, policy = both(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reference), base, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(policy), adapted, atol=1e-6)
    with pytest.raises(RuntimeError):
        with kerasft.adapters_disabled(model):
            raise RuntimeError("boom")
    assert all(w.adapter_enabled for w in kerasft.targeting.adapter_wrappers(model))


def test_merged_adapters_cannot_be_switched_off():
    model = testing.tiny_causal_lm("gemma3")
    LoRA(rank=2).apply(model)
    for wrapper in kerasft.targeting.adapter_wrappers(model):
        wrapper.merge()
    with pytest.raises(ValueError, match="merged adapters at"):
        with kerasft.adapters_disabled(model):
            pass


def test_model_without_adapters_is_unchanged():
    model = testing.tiny_causal_lm("gemma3")
    x, _, _ = testing.random_token_batch()
    before = np.asarray(model.predict(x, verbose=0))
    with kerasft.adapters_disabled(model) as same:
        assert same is model
        np.testing.assert_allclose(np.asarray(model.predict(x, verbose=0)), before)


# --- Named adapters ----------------------------------------------------------

from kerasft.adapter_switch import (  # noqa: E402
    active_adapter,
    add_adapter,
    adapter_names,
    combine_adapters,
    delete_adapter,
    load_adapters,
    save_adapters,
    set_adapter,
)
from kerasft.targeting import adapter_wrappers  # noqa: E402


def _separate(kind, recipe, seed, directory):
    """A model that only ever had one adapter, saved to `directory`."""
    model = testing.tiny_causal_lm(kind)
    recipe.apply(model)
    _perturb_trainable(model, seed)
    kerasft.save_adapter(model, directory)
    return model


def _out(model, x):
    return keras.ops.convert_to_numpy(model(x))


@pytest.mark.parametrize("kind", ["gemma3", "gemma"])
def test_switching_named_adapters_equals_separately_built_models(kind, tmp_path):
    x, _, _ = testing.random_token_batch()
    a = _separate(kind, LoRA(rank=2, targets=["attention"]), 1, tmp_path / "a")
    b = _separate(kind, LoRA(rank=3, targets=["mlp"], use_rslora=True), 2, tmp_path / "b")
    c = _separate(kind, LoRA(rank=2, targets=["attention"]), 3, tmp_path / "c")
    d = _separate(kind, IA3(), 4, tmp_path / "d")
    model = testing.tiny_causal_lm(kind)
    base = _out(model, x)
    for name in "abcd":
        add_adapter(model, name, tmp_path / name)
    assert adapter_names(model) == list("abcd") and active_adapter(model) is None
    np.testing.assert_array_equal(_out(model, x), base)
    for name, separate in [("a", a), ("b", b), ("c", c), ("d", d), ("a", a)]:
        set_adapter(model, name)
        assert active_adapter(model) == name
        np.testing.assert_array_equal(_out(model, x), _out(separate, x))
        with kerasft.adapters_disabled(model):
            np.testing.assert_array_equal(_out(model, x), base)
    # predict's trace follows the switch.
    def predicted(m):
        return np.asarray(m.predict(x, verbose=0))

    first = predicted(model)
    set_adapter(model, "b")
    np.testing.assert_allclose(predicted(model), predicted(b), atol=1e-6)
    assert np.abs(first - predicted(model)).max() > 1e-3
    set_adapter(model, None)
    np.testing.assert_array_equal(_out(model, x), base)
    assert not adapter_wrappers(model)
    with pytest.raises(ValueError, match=r"No adapter named 'e'.*\['a', 'b', 'c', 'd'\]"):
        set_adapter(model, "e")
    delete_adapter(model, "c")
    assert adapter_names(model) == ["a", "b", "d"]


def test_an_adapter_trained_under_a_name_keeps_its_training_across_switches(tmp_path):
    x, y, w = testing.random_token_batch()
    _separate("gemma3", LoRA(rank=2), 1, tmp_path / "a")
    model = testing.tiny_causal_lm("gemma3")
    base = _out(model, x)
    add_adapter(model, "a", tmp_path / "a")
    add_adapter(model, "new", recipe=LoRA(rank=4, targets=["mlp"]))
    assert active_adapter(model) == "new"
    np.testing.assert_allclose(_out(model, x), base, atol=1e-6)  # B = 0 at first
    model.fit(x, y, sample_weight=w, epochs=2, verbose=0)
    trained = _out(model, x)
    assert np.abs(trained - base).max() > 1e-4
    set_adapter(model, "a")
    set_adapter(model, "new")
    np.testing.assert_array_equal(_out(model, x), trained)

    # A live adapter without a name is not dropped by a switch.
    other = testing.tiny_causal_lm("gemma3")
    LoRA(rank=2).apply(other)
    with pytest.raises(ValueError, match="has no name.*add_adapter"):
        add_adapter(other, "a", tmp_path / "a")
    add_adapter(other, "mine")
    assert active_adapter(other) == "mine"


def _kernels(model):
    return {
        layer.path: keras.ops.convert_to_numpy(layer.kernel)
        for layer in kerasft.targeting.iter_layers(model)
        if getattr(layer, "kernel", None) is not None and "decoder_block" in layer.path
    }


@pytest.mark.parametrize("kind", ["gemma3", "gemma"])
def test_combining_lora_adapters_is_the_weighted_sum_of_their_updates(kind, tmp_path):
    x, _, _ = testing.random_token_batch()
    targets = ["query", "value", "ffw_linear"]
    separate = {
        "a": _separate(kind, LoRA(rank=2, alpha=3.0, targets=targets), 1, tmp_path / "a"),
        "b": _separate(kind, LoRA(rank=3, alpha=2.0, targets=targets, use_rslora=True,
                                  rank_pattern={"ffw_linear": 1}), 2, tmp_path / "b"),
    }
    base_kernels = _kernels(testing.tiny_causal_lm(kind))
    deltas = {}
    for name, model in separate.items():
        kerasft.merge_adapters(model)
        merged = _kernels(model)
        deltas[name] = {path: merged[path] - base_kernels[path] for path in base_kernels}

    def reference(weights):
        model = testing.tiny_causal_lm(kind)
        for layer in kerasft.targeting.iter_layers(model):
            if layer.path in base_kernels:
                layer.kernel.assign(base_kernels[layer.path] + sum(
                    w * deltas[name][layer.path] for name, w in weights.items()))
        return _out(model, x)

    model = testing.tiny_causal_lm(kind)
    add_adapter(model, "a", tmp_path / "a")
    add_adapter(model, "b", tmp_path / "b")
    combine_adapters(model, ["a", "b"], [0.5, -2.0], "ab")
    set_adapter(model, "ab")
    assert {w.rank for w in adapter_wrappers(model)} == {5, 3}
    np.testing.assert_allclose(_out(model, x), reference({"a": 0.5, "b": -2.0}), atol=1e-5)
    # 'linear' is exact for one adapter (PEFT's sqrt(w * scale) on both factors).
    combine_adapters(model, ["b"], [0.7], "b07", combination_type="linear")
    set_adapter(model, "b07")
    np.testing.assert_allclose(_out(model, x), reference({"b": 0.7}), atol=1e-5)
    with pytest.raises(ValueError, match="'linear' needs equal ranks"):
        combine_adapters(model, ["a", "b"], [1.0, 1.0], "bad", combination_type="linear")
    add_adapter(model, "dora", recipe=LoRA(rank=2, targets=targets, use_dora=True))
    with pytest.raises(ValueError, match="plain LoRA.*use_dora=True"):
        combine_adapters(model, ["a", "dora"], [1.0, 1.0], "bad")


def test_names_survive_save_and_load(tmp_path):
    x, _, _ = testing.random_token_batch()
    _separate("gemma3", LoRA(rank=2), 1, tmp_path / "a")
    model = testing.tiny_causal_lm("gemma3")
    add_adapter(model, "a", tmp_path / "a")
    add_adapter(model, "t", recipe=IA3())
    _perturb_trainable(model, 5)
    combine_adapters(model, ["a", "a"], [1.0, 0.5], "a15")
    outputs = {}
    for name in adapter_names(model):
        set_adapter(model, name)
        outputs[name] = _out(model, x)
    set_adapter(model, "t")
    save_adapters(model, tmp_path / "all")
    fresh = load_adapters(testing.tiny_causal_lm("gemma3"), tmp_path / "all")
    assert adapter_names(fresh) == ["a", "t", "a15"] and active_adapter(fresh) == "t"
    for name, expected in outputs.items():
        set_adapter(fresh, name)
        np.testing.assert_array_equal(_out(fresh, x), expected)
    # Each sub-folder is an ordinary adapter folder.
    single = kerasft.load_adapter(testing.tiny_causal_lm("gemma3"), tmp_path / "all" / "a15")
    np.testing.assert_array_equal(_out(single, x), outputs["a15"])


def test_perplexity_inside_the_switch_scores_the_base():
    # evaluate.perplexity keeps a traced scorer per backbone; before the
    # switch counter it kept scoring with the adapters on inside the block.
    from kerasft.evaluate import perplexity

    model = testing.tiny_causal_lm("gemma3")
    data = [testing.random_token_batch(batch_size=4)]
    base = perplexity(model, data, progress=False)["loss"]
    LoRA(rank=2).apply(model)
    _perturb_trainable(model)
    adapted = perplexity(model, data, progress=False)["loss"]
    assert abs(adapted - base) > 1e-4
    with kerasft.adapters_disabled(model):
        inside = perplexity(model, data, progress=False)["loss"]
    after = perplexity(model, data, progress=False)["loss"]
    np.testing.assert_allclose(inside, base, rtol=1e-6)
    np.testing.assert_allclose(after, adapted, rtol=1e-6)
