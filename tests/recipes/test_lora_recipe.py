import keras
import numpy as np
import pytest

from kerasft import testing
from kerasft.recipes import LoRA
from kerasft.recipes.lora import lora_layers
from tests.conftest import to_numpy, weights_by_path


def gemma_fans(name, kernel_shape):
    """(fan_in, fan_out) of a Gemma kernel, written out per layer name."""
    if name in ("query", "key", "value"):  # (heads, hidden, head_dim)
        return kernel_shape[1], kernel_shape[0] * kernel_shape[2]
    if name == "attention_output":  # (heads, head_dim, hidden)
        return kernel_shape[0] * kernel_shape[1], kernel_shape[2]
    return kernel_shape[0], kernel_shape[1]  # (in, out) feed-forward kernels


@pytest.mark.parametrize("targets", [("query", "value"), ("attention", "mlp")])
def test_apply_keeps_outputs_and_trains_rank_times_fans(model_kind, batch, targets):
    model = testing.tiny_causal_lm(model_kind)
    x, _, _ = batch
    expected = to_numpy(model(x))
    LoRA(rank=4, alpha=8, targets=targets).apply(model)
    np.testing.assert_allclose(to_numpy(model(x)), expected, atol=1e-6)
    wrappers = lora_layers(model)
    assert len(wrappers) == 2 * (2 if targets == ("query", "value") else 7)
    expected_count = sum(
        4 * sum(gemma_fans(w.layer.name, tuple(w.layer._kernel.shape))) for w in wrappers
    )
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert trainable == expected_count


def test_fit_lowers_loss_moves_every_adapter_and_no_base_weight(model_kind, batch):
    model = testing.tiny_causal_lm(model_kind)
    x, y, w = batch
    recipe = LoRA(rank=4, alpha=8, targets=("query", "value", "ffw_linear"))
    recipe.apply(model)
    adapter_paths = {v.path for v in model.trainable_weights}
    before = weights_by_path(model)
    recipe.compile(model, learning_rate=1e-2)
    history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 0.05
    after = weights_by_path(model)
    for path, value in before.items():
        if path in adapter_paths:
            assert not np.array_equal(after[path], value), f"{path} did not train"
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=path)


def test_generation_runs_through_the_adapters_after_training(batch):
    model = testing.tiny_causal_lm("gemma")
    x, y, w = batch
    recipe = LoRA(rank=4, targets="attention")
    recipe.apply(model)
    recipe.compile(model, learning_rate=1e-2, sampler="greedy")
    model.fit(x, y, sample_weight=w, batch_size=4, epochs=2, verbose=0)
    prompt = {
        "token_ids": np.array([[2, 5, 6, 7, 0, 0, 0, 0]], dtype="int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=bool),
    }
    out = model.generate(prompt, stop_token_ids=None)
    tokens = to_numpy(out["token_ids"])
    np.testing.assert_array_equal(tokens[0, :4], [2, 5, 6, 7])
    # Greedy decoding must agree with argmax of the full forward pass.
    full = {"token_ids": tokens[:, :4], "padding_mask": np.ones((1, 4), bool)}
    assert tokens[0, 4] == int(np.argmax(to_numpy(model(full))[0, -1]))


def test_targets_by_glob_and_rank_pattern(model_kind):
    model = testing.tiny_causal_lm(model_kind)
    LoRA(rank=2, targets=["decoder_block_1*/attention/value", "ffw_linear"],
         rank_pattern={"ffw_linear": 3}).apply(model)
    ranks = {w.target_path: w.rank for w in lora_layers(model)}
    assert ranks == {
        "decoder_block_1/attention/value": 2,
        "decoder_block_0/ffw_linear": 3,
        "decoder_block_1/ffw_linear": 3,
    }


def test_applying_twice_to_the_same_layer_is_refused(model_kind):
    model = testing.tiny_causal_lm(model_kind)
    LoRA(rank=2, targets=("query",)).apply(model)
    with pytest.raises(ValueError, match=r"targets=\['query', 'key'\]"):
        LoRA(rank=2, targets=("query", "key")).apply(model)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rank": 0}, "rank=0"),
        ({"alpha": -1}, "alpha=-1"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"targets": []}, r"targets=\(\)"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoRA(**kwargs)


def test_targets_that_match_nothing_list_existing_paths():
    model = testing.tiny_causal_lm("gemma3")
    with pytest.raises(ValueError, match=r"targets=\['qkv'\].*decoder_block_0/attention/query"):
        LoRA(targets=["qkv"]).apply(model)


def test_bfloat16_model_trains_float32_adapters(batch):
    model = testing.tiny_causal_lm("gemma3", dtype="bfloat16")
    x, y, w = batch
    recipe = LoRA(rank=4)
    recipe.apply(model)
    for v in model.trainable_weights:
        assert keras.backend.standardize_dtype(v.dtype) == "float32"
    recipe.compile(model, learning_rate=1e-2)
    history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_a_failed_apply_leaves_the_model_trainable():
    model = testing.tiny_causal_lm("gemma")
    trainable = len(model.trainable_weights)
    with pytest.raises(ValueError):
        LoRA(targets=["nothing"]).apply(model)
    assert len(model.trainable_weights) == trainable


# Issue 13 item 8: arguments that used to be accepted silently.


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf")])
def test_alpha_must_be_finite(alpha):
    with pytest.raises(ValueError, match=rf"`alpha` must be a finite positive number. Received: alpha={alpha!r}"):
        LoRA(alpha=alpha)


@pytest.mark.parametrize("argument", ["use_rslora", "use_dora"])
@pytest.mark.parametrize("value", ["false", 0, None])
def test_flags_must_be_booleans(argument, value):
    with pytest.raises(ValueError, match=rf"`{argument}` must be True or False. Received: {argument}={value!r}"):
        LoRA(**{argument: value})


def test_numpy_booleans_and_integers_are_accepted_and_stored_as_python_values():
    import json

    recipe = LoRA(rank=np.int64(4), alpha=np.float32(8.0), use_rslora=np.bool_(True),
                  use_dora=np.bool_(False), rank_pattern={"value": np.int32(2)})
    config = recipe.get_config()
    assert config["rank"] == 4 and type(config["rank"]) is int
    assert type(config["alpha"]) is float and config["alpha"] == 8.0
    assert config["use_rslora"] is True and config["use_dora"] is False
    assert type(config["rank_pattern"]["value"]) is int
    json.dumps(config)  # numpy scalars would not serialise
    model = testing.tiny_causal_lm("gemma3")
    recipe.apply(model)
    assert {w.target_path: w.rank for w in lora_layers(model)}["decoder_block_0/attention/value"] == 2


def test_non_integral_numpy_rank_is_refused():
    with pytest.raises(ValueError, match=r"`rank` must be a positive integer. Received: rank=np.float64\(2.5\)"):
        LoRA(rank=np.float64(2.5))


def test_rank_pattern_key_matching_no_target_lists_the_target_paths():
    model = testing.tiny_causal_lm("gemma3")
    recipe = LoRA(rank=2, targets=["query", "value"], rank_pattern={"valeu": 4})
    with pytest.raises(ValueError, match=r"rank_pattern key 'valeu' matches no target.*decoder_block_0/attention/query"):
        recipe.apply(model)
    assert not lora_layers(model)  # refused before anything changed
    # A key that names a layer the targets leave out is refused too.
    with pytest.raises(ValueError, match=r"rank_pattern key 'mlp'"):
        LoRA(rank=2, targets=["query"], rank_pattern={"mlp": 4}).apply(model)


def test_rank_pattern_takes_the_attention_and_mlp_shortcuts():
    model = testing.tiny_causal_lm("gemma3")
    LoRA(rank=2, targets=["attention", "mlp"], rank_pattern={"mlp": 6, "attention": 3}).apply(model)
    ranks = {w.target_path.split("/", 1)[1]: w.rank for w in lora_layers(model)}
    assert ranks == {"attention/query": 3, "attention/key": 3, "attention/value": 3,
                     "attention/attention_output": 3, "ffw_gating": 6, "ffw_gating_2": 6,
                     "ffw_linear": 6}
