"""One table of fine-tuning methods, each checked the same way on tiny Gemma and Gemma 3.

Adding a method is one `Method(...)` entry in `METHODS`: how to build its
recipe, how many parameters it trains on a layer (from the layer's name and
kernel fans, computed here independently of the library), whether it merges.

Every method is trained once per model kind (a module-scoped fixture shares
the trained model between the checks) and must: train exactly the expected
number of parameters; leave the output unchanged at initialisation; lower
the loss in a few steps, moving every one of its weights and no base weight;
save and load onto a fresh model with equal outputs; merge to equal outputs
with no adapter left (or refuse to merge, if it cannot); generate.
"""

import dataclasses
from typing import Callable

import numpy as np
import pytest

import kerasft
from kerasft import testing
from kerasft.recipes import IA3, Adapters, LoRA
from kerasft.targeting import adapter_wrappers, dense_layers
from tests.conftest import to_numpy, weights_by_path


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the table.

    Attributes:
        id: the test id.
        recipe: builds a fresh recipe.
        params: `(layer_name, fan_in, fan_out) -> trained parameters` for one
            dense layer of the base model (0 if the method leaves it alone).
        mergeable: whether `merge_adapters` folds it into the kernels.
        learning_rate: for the few fit steps.
    """

    id: str
    recipe: Callable
    params: Callable
    mergeable: bool = True
    learning_rate: float = 1e-2


LORA_TARGETS = ("query", "value", "ffw_linear")


def lora_params(name, fan_in, fan_out, rank=4):
    return rank * (fan_in + fan_out) if name in LORA_TARGETS else 0


def dora_params(name, fan_in, fan_out):
    # LoRA's A and B plus one magnitude per output feature.
    return lora_params(name, fan_in, fan_out) + (fan_out if name in LORA_TARGETS else 0)


def ia3_params(name, fan_in, fan_out):
    # One scale per output feature of key/value, per input feature of ffw_linear.
    return {"key": fan_out, "value": fan_out, "ffw_linear": fan_in}.get(name, 0)


def adapter_params(name, fan_in, fan_out, bottleneck=4):
    if name not in ("attention_output", "ffw_linear"):
        return 0
    return fan_out * bottleneck + bottleneck + bottleneck * fan_out + fan_out


METHODS = [
    Method("lora", lambda: LoRA(rank=4, alpha=8, targets=LORA_TARGETS), lora_params),
    Method(
        "lora-rslora",
        lambda: LoRA(rank=4, alpha=8, targets=LORA_TARGETS, use_rslora=True),
        lora_params,
    ),
    Method("dora", lambda: LoRA(rank=4, alpha=8, targets=LORA_TARGETS, use_dora=True), dora_params),
    Method("ia3", lambda: IA3(), ia3_params, learning_rate=5e-2),
    Method(
        "adapters",
        lambda: Adapters(bottleneck=4, placement="both"),
        adapter_params,
        mergeable=False,
    ),
    # Rows for the soft-prompt and head methods go here:
    # Method("prompt-tuning", lambda: PromptTuning(...), ..., mergeable=False),
    # Method("p-tuning", lambda: PTuning(...), ..., mergeable=False),
    # Method("prefix-tuning", lambda: PrefixTuning(...), ..., mergeable=False),
    # Method("classifier", lambda: Classifier(...), ..., mergeable=False),
]

KINDS = ("gemma", "gemma3")


def gemma_fans(name, kernel_shape):
    """(fan_in, fan_out) of a Gemma kernel, written out per layer name."""
    if name in ("query", "key", "value"):  # (heads, hidden, head_dim)
        return kernel_shape[1], kernel_shape[0] * kernel_shape[2]
    if name == "attention_output":  # (heads, head_dim, hidden)
        return kernel_shape[0] * kernel_shape[1], kernel_shape[2]
    return kernel_shape[0], kernel_shape[1]  # (in, out) feed-forward kernels


def expected_trainable_params(model, method):
    total = 0
    for path, layer in dense_layers(model).items():
        name = path.rsplit("/", 1)[-1]
        total += method.params(name, *gemma_fans(name, tuple(layer.kernel.shape)))
    return total


@dataclasses.dataclass
class Trained:
    method: Method
    kind: str
    x: dict
    base_output: np.ndarray
    initial_output: np.ndarray
    expected_params: int
    trainable_params: int
    base_paths: set
    before: dict
    after: dict
    losses: list
    trained_output: np.ndarray
    adapter_dir: object
    model: object


@pytest.fixture(
    scope="module",
    params=[(m, k) for m in METHODS for k in KINDS],
    ids=[f"{m.id}-{k}" for m in METHODS for k in KINDS],
)
def trained(request, tmp_path_factory):
    method, kind = request.param
    x, y, w = testing.random_token_batch()
    model = testing.tiny_causal_lm(kind)
    base_output = to_numpy(model(x))
    base_paths = {v.path for v in model.weights}
    expected = expected_trainable_params(model, method)
    recipe = method.recipe()
    model = recipe.apply(model)
    initial_output = to_numpy(model(x))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    before = weights_by_path(model)
    recipe.compile(model, learning_rate=method.learning_rate, sampler="greedy")
    history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=4, verbose=0)
    adapter_dir = tmp_path_factory.mktemp(f"{method.id}-{kind}")
    kerasft.save_adapter(model, adapter_dir)
    return Trained(
        method=method,
        kind=kind,
        x=x,
        base_output=base_output,
        initial_output=initial_output,
        expected_params=expected,
        trainable_params=trainable,
        base_paths=base_paths,
        before=before,
        after=weights_by_path(model),
        losses=history.history["loss"],
        trained_output=to_numpy(model(x)),
        adapter_dir=adapter_dir,
        model=model,
    )


def test_trains_the_expected_number_of_parameters(trained):
    assert trained.expected_params > 0
    assert trained.trainable_params == trained.expected_params


def test_output_equals_the_base_at_initialisation(trained):
    np.testing.assert_allclose(trained.initial_output, trained.base_output, atol=1e-6)


def test_fit_lowers_loss_moves_every_method_weight_and_no_base_weight(trained):
    assert trained.losses[-1] < trained.losses[0]
    for path, value in trained.before.items():
        if path in trained.base_paths:
            np.testing.assert_array_equal(trained.after[path], value, err_msg=path)
        else:
            assert not np.array_equal(trained.after[path], value), f"{path} did not train"


def test_save_then_load_into_a_fresh_model_gives_equal_outputs(trained):
    fresh = kerasft.load_adapter(testing.tiny_causal_lm(trained.kind), trained.adapter_dir)
    np.testing.assert_array_equal(to_numpy(fresh(trained.x)), trained.trained_output)


def test_merge_gives_equal_outputs_and_leaves_no_adapter(trained):
    model = kerasft.load_adapter(testing.tiny_causal_lm(trained.kind), trained.adapter_dir)
    if not trained.method.mergeable:
        with pytest.raises(ValueError, match="cannot be merged"):
            kerasft.merge_adapters(model)
        return
    assert kerasft.merge_adapters(model)
    assert not adapter_wrappers(model)
    assert {v.path for v in model.weights} == trained.base_paths
    np.testing.assert_allclose(to_numpy(model(trained.x)), trained.trained_output, atol=1e-5)


def test_generate_runs_after_training(trained):
    if trained.kind != "gemma":
        pytest.skip("Gemma3CausalLM.generate needs a preprocessor; checked on GemmaCausalLM")
    prompt = {
        "token_ids": np.array([[2, 5, 6, 7, 0, 0, 0, 0]], dtype="int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=bool),
    }
    tokens = to_numpy(trained.model.generate(prompt, stop_token_ids=None)["token_ids"])
    np.testing.assert_array_equal(tokens[0, :4], [2, 5, 6, 7])
    full = {"token_ids": tokens[:, :4], "padding_mask": np.ones((1, 4), bool)}
    assert tokens[0, 4] == int(np.argmax(to_numpy(trained.model(full))[0, -1]))


@pytest.mark.parametrize(
    "make_recipe,message",
    [
        (lambda: LoRA(use_dora="yes"), "use_dora='yes'"),
        (lambda: IA3(targets=[]), r"targets=\(\)"),
        (lambda: IA3(feedforward_targets=[3]), r"feedforward_targets=\(3,\)"),
        (lambda: Adapters(bottleneck=0), "bottleneck=0"),
        (lambda: Adapters(placement="mlp"), "placement='mlp'"),
        (lambda: Adapters(activation="nope"), "activation='nope'"),
    ],
)
def test_bad_recipe_arguments_name_the_value(make_recipe, message):
    with pytest.raises(ValueError, match=message):
        make_recipe()


@pytest.mark.parametrize("method", METHODS, ids=[m.id for m in METHODS])
def test_recipe_config_round_trip(method):
    from kerasft.recipes import recipe_from_config

    recipe = method.recipe()
    assert recipe_from_config(recipe.get_config()).get_config() == recipe.get_config()
