"""One table of fine-tuning methods, each checked the same way on tiny Gemma and Gemma 3.

Adding a method is one `Method(...)` entry in `METHODS`: how to build its
recipe, how many parameters it trains on a layer (from the layer's name and
kernel fans) and on the whole model (soft prompts, prefix encoders, a new
head; from the backbone's sizes), all computed here independently of the
library, whether it starts as the identity, whether it merges, and whether it
is a language model or a classifier.

Every method is trained once per model kind (a module-scoped fixture shares
the trained model between the checks) and must: train exactly the expected
number of parameters; leave the output unchanged at initialisation; lower
the loss in a few steps, moving every one of its weights and no base weight;
save and load onto a fresh model with equal outputs; merge to equal outputs
with no adapter left (or refuse to merge, if it cannot); generate (greedy
decoding equals the argmax of the trained model), or for a classifier predict
class probabilities.
"""

import dataclasses
from typing import Callable

import numpy as np
import pytest

import kerasft
from kerasft import testing
from kerasft.evaluate import generate_token_ids
from kerasft.recipes import IA3, Adapters, Classifier, LoRA, PrefixTuning, PromptTuning, PTuning
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
        model_params: `(Sizes) -> trained parameters` outside the dense
            layers: virtual tokens, prompt or prefix encoders, a new head.
        identity_at_init: whether the adapted model starts equal to the base.
        mergeable: whether `merge_adapters` folds it into the kernels (a
            classifier's head stays: it is not an adapter).
        folds: whether the recipe's `merge` folds an encoder into plain
            weights instead (prompt and prefix methods; the wrappers stay).
        task: "lm" (train on next tokens, generate) or "classify" (train on
            labels, predict probabilities).
        learning_rate: for the few fit steps.
    """

    id: str
    recipe: Callable
    params: Callable = lambda name, fan_in, fan_out: 0
    model_params: Callable = lambda sizes: 0
    identity_at_init: bool = True
    mergeable: bool = True
    folds: bool = False
    task: str = "lm"
    learning_rate: float = 1e-2


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The backbone sizes whole-model parameter counts depend on."""

    hidden: int
    layers: int
    kv_width: int  # key/value heads x head width


def backbone_sizes(model):
    backbone = model.backbone
    return Sizes(
        hidden=backbone.hidden_dim,
        layers=backbone.num_layers,
        kv_width=backbone.num_key_value_heads * backbone.head_dim,
    )


LORA_TARGETS = ("query", "value", "ffw_linear")
VIRTUAL_TOKENS = 4
ENCODER_WIDTH = 8
NUM_CLASSES = 3


def dense_params(fan_in, fan_out):
    return fan_in * fan_out + fan_out


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
    Method(
        "prompt-tuning",
        lambda: PromptTuning(VIRTUAL_TOKENS, init="vocab"),
        model_params=lambda s: VIRTUAL_TOKENS * s.hidden,
        identity_at_init=False,
        mergeable=False,
        folds=True,
        learning_rate=3e-2,
    ),
    Method(
        "p-tuning",
        lambda: PTuning(VIRTUAL_TOKENS, encoder="mlp", hidden=ENCODER_WIDTH),
        # Virtual token inputs, then Dense(hidden -> w), Dense(w -> w), Dense(w -> hidden).
        model_params=lambda s: VIRTUAL_TOKENS * s.hidden
        + dense_params(s.hidden, ENCODER_WIDTH)
        + dense_params(ENCODER_WIDTH, ENCODER_WIDTH)
        + dense_params(ENCODER_WIDTH, s.hidden),
        identity_at_init=False,
        mergeable=False,
        folds=True,
        learning_rate=3e-2,
    ),
    Method(
        "prefix-tuning",
        lambda: PrefixTuning(VIRTUAL_TOKENS, reparameterize=True, hidden=ENCODER_WIDTH),
        # Prefix inputs, then Dense(hidden -> w), Dense(w -> a key and a value per layer).
        model_params=lambda s: VIRTUAL_TOKENS * s.hidden
        + dense_params(s.hidden, ENCODER_WIDTH)
        + dense_params(ENCODER_WIDTH, s.layers * 2 * s.kv_width),
        identity_at_init=False,
        mergeable=False,
        folds=True,
        learning_rate=3e-2,
    ),
    Method(
        "classifier-lora",
        lambda: Classifier(NUM_CLASSES, base=LoRA(rank=4, alpha=8, targets=LORA_TARGETS)),
        lora_params,
        model_params=lambda s: dense_params(s.hidden, NUM_CLASSES),
        identity_at_init=False,
        task="classify",
        learning_rate=3e-2,
    ),
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
    total = method.model_params(backbone_sizes(model))
    for path, layer in dense_layers(model).items():
        name = path.rsplit("/", 1)[-1]
        total += method.params(name, *gemma_fans(name, tuple(layer.kernel.shape)))
    return total


def training_batch(task):
    """`(x, y, sample_weight)`: next tokens for a language model, one label
    per row for a classifier."""
    x, y, w = testing.random_token_batch()
    if task == "classify":
        labels = np.arange(len(y), dtype="int32") % NUM_CLASSES
        return x, labels, None
    return x, y, w


@dataclasses.dataclass
class Trained:
    method: Method
    kind: str
    x: dict
    base_output: np.ndarray
    initial_output: np.ndarray
    model_params: int
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
    x, y, w = training_batch(method.task)
    model = testing.tiny_causal_lm(kind)
    base_output = to_numpy(model(x))
    base_paths = {v.path for v in model.weights}
    expected = expected_trainable_params(model, method)
    sizes = backbone_sizes(model)
    recipe = method.recipe()
    model = recipe.apply(model)
    initial_output = to_numpy(model(x))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    before = weights_by_path(model)
    if method.task == "lm":
        recipe.compile(model, learning_rate=method.learning_rate, sampler="greedy")
    else:
        recipe.compile(model, learning_rate=method.learning_rate)
    history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=4, verbose=0)
    adapter_dir = tmp_path_factory.mktemp(f"{method.id}-{kind}")
    kerasft.save_adapter(model, adapter_dir)
    return Trained(
        method=method,
        kind=kind,
        x=x,
        base_output=base_output,
        initial_output=initial_output,
        model_params=method.model_params(sizes),
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
    if not trained.method.identity_at_init:
        # A random soft prompt or prefix changes the logits from the start;
        # a new head changes what the output is.
        if trained.method.task == "lm":
            assert not np.allclose(trained.initial_output, trained.base_output, atol=1e-3)
        else:
            assert trained.initial_output.shape == (len(trained.x["token_ids"]), NUM_CLASSES)
        return
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
    # Only the weights that are not adapters (a classifier's head) are left.
    kept = [v for v in model.weights if v.path not in trained.base_paths]
    assert sum(int(np.prod(v.shape)) for v in kept) == trained.model_params
    assert trained.base_paths <= {v.path for v in model.weights}
    np.testing.assert_allclose(to_numpy(model(trained.x)), trained.trained_output, atol=1e-5)


def test_the_merge_verb_gives_one_report_for_every_method(trained):
    model = kerasft.load_adapter(testing.tiny_causal_lm(trained.kind), trained.adapter_dir)
    recipe = trained.method.recipe()
    wrapped = sorted(w.target_path for w in adapter_wrappers(model))
    if not trained.method.mergeable and not trained.method.folds:
        with pytest.raises(ValueError, match="cannot be merged"):
            recipe.merge(model, batch=trained.x)
        assert sorted(w.target_path for w in adapter_wrappers(model)) == wrapped
        return
    report = recipe.merge(model, batch=trained.x)
    assert set(report) == {"merged", "max_abs_logit_difference"}
    assert sorted(report["merged"]) == wrapped and wrapped
    assert report["max_abs_logit_difference"] < 1e-4
    np.testing.assert_allclose(to_numpy(model(trained.x)), trained.trained_output, atol=1e-4)
    left = sorted(w.target_path for w in adapter_wrappers(model))
    assert left == (wrapped if trained.method.folds else [])
    assert recipe.merge(model) == {"merged": [], "max_abs_logit_difference": None}
    with pytest.raises(ValueError, match=r"takes the options \[\] besides `batch`.*rank=2"):
        recipe.merge(model, rank=2)


def test_generate_after_training_is_greedy_decoding(trained):
    model = trained.model
    if trained.method.task == "classify":
        probabilities = to_numpy(model.predict(trained.x, verbose=0))
        assert probabilities.shape == (len(trained.x["token_ids"]), NUM_CLASSES)
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probabilities, trained.trained_output, atol=1e-5)
        return
    prompt = {
        "token_ids": np.array([[2, 5, 6, 7, 0, 0, 0, 0]], dtype="int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=bool),
    }
    # kerasft's token generation works on both kinds; keras-hub's generate
    # needs a preprocessor on Gemma 3, so it is compared on Gemma only.
    tokens = generate_token_ids(model, prompt)["token_ids"]
    if trained.kind == "gemma":
        keras_hub_tokens = model.generate(prompt, stop_token_ids=None)["token_ids"]
        np.testing.assert_array_equal(to_numpy(keras_hub_tokens), tokens)
    np.testing.assert_array_equal(tokens[0, :4], [2, 5, 6, 7])
    for position in (4, 5):
        context = {"token_ids": tokens[:, :position], "padding_mask": np.ones((1, position), bool)}
        assert tokens[0, position] == int(np.argmax(to_numpy(model(context))[0, -1]))


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
