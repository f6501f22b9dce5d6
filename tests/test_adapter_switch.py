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
