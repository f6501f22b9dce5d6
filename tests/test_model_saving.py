"""`model.save()` / `keras.saving.load_model` of models with kerasft recipes (kerasft.model_saving).

Every recipe family is applied to a tiny model, its trained weights are
moved off their initial values (so an adapter that reloads as zero or at its
init would show), and the model is saved to a `.keras` file and loaded with
the plain Keras API: logits must be equal exactly, and the same variables
trainable. Also: a load in a fresh process that only imports kerasft (and
Keras's own error without it), training after a load (only adapter weights
move), merged models, named adapters, and a file naming an unknown recipe.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import warnings
import zipfile

import keras
import numpy as np
import pytest

import kerasft
from kerasft import testing
from kerasft.adapter_switch import active_adapter, adapter_names
from kerasft.recipes import (
    IA3,
    QAT,
    DPO,
    Adapters,
    Classifier,
    Freeze,
    LoRA,
    PrefixTuning,
    PromptTuning,
    PTuning,
    QLoRA,
)
from kerasft.recipes.applied import applied_recipes, split_merged_recipes
from kerasft.targeting import adapter_wrappers
from tests.conftest import to_numpy, weights_by_path

FAMILIES = [
    pytest.param(lambda: LoRA(rank=4), "gemma3", id="lora"),
    pytest.param(lambda: LoRA(rank=4, targets="all-linear"), "gemma", id="lora-gemma1"),
    pytest.param(lambda: LoRA(rank=4, use_rslora=True, rank_pattern={"value": 2}), "gemma3",
                 id="rslora"),
    pytest.param(lambda: LoRA(rank=4, use_dora=True), "gemma3", id="dora"),
    pytest.param(lambda: QLoRA(rank=4, quantization="int8", group_size=16), "gemma3",
                 id="qlora-int8"),
    pytest.param(lambda: QLoRA(rank=4, quantization="int4", group_size=8), "gemma3",
                 id="qlora-int4"),
    pytest.param(lambda: QLoRA(rank=4, quantization="nf4", group_size=8), "gemma3",
                 id="qlora-nf4"),
    pytest.param(lambda: IA3(), "gemma3", id="ia3"),
    pytest.param(lambda: Adapters(), "gemma3", id="bottleneck-adapters"),
    pytest.param(lambda: PrefixTuning(num_virtual_tokens=3), "gemma3", id="prefix"),
    pytest.param(lambda: PrefixTuning(num_virtual_tokens=3, reparameterize=False), "gemma",
                 id="prefix-plain-gemma1"),
    # The soft prompt holds its model weakly: a plain reference was a cycle
    # Keras 3.15's loader followed without end (RecursionError).
    pytest.param(lambda: PromptTuning(num_virtual_tokens=3), "gemma3", id="prompt"),
    pytest.param(lambda: PTuning(num_virtual_tokens=3), "gemma3", id="p-tuning"),
    pytest.param(lambda: Freeze(), "gemma3", id="freeze"),
    pytest.param(lambda: QAT(mode="int4", group_size=8, targets="attention"), "gemma3", id="qat"),
    pytest.param(lambda: Classifier(num_classes=3, base=LoRA(rank=4)), "gemma3",
                 id="classifier-lora"),
    pytest.param(lambda: Classifier(num_classes=2, train="head"), "gemma", id="classifier-head"),
]


@pytest.fixture(scope="module")
def inputs():
    return testing.random_token_batch()[0]


def logits(model, x):
    return to_numpy(model(x, training=False))


def move_trained_weights(model, seed=0):
    """Adds noise to every trainable weight: a reload at init (or zeroed) would differ."""
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        noise = rng.normal(0.0, 0.05, variable.shape).astype(variable.dtype)
        variable.assign(variable + noise)


def round_trip(model, path):
    model.save(path)
    with warnings.catch_warnings():
        # keras-hub's CausalLM has its own compile(): Keras says it skips it.
        warnings.filterwarnings("ignore", message=".*compile\\(\\)` was not called")
        return keras.saving.load_model(path)


def trainable_paths(model):
    return sorted(variable.path for variable in model.trainable_variables)


@pytest.mark.parametrize("make_recipe, kind", FAMILIES)
def test_saved_and_loaded_model_gives_equal_logits(make_recipe, kind, inputs, tmp_path):
    model = testing.tiny_causal_lm(kind)
    model = make_recipe().apply(model)
    move_trained_weights(model)
    expected = logits(model, inputs)

    loaded = round_trip(model, tmp_path / "model.keras")

    np.testing.assert_array_equal(logits(loaded, inputs), expected)
    assert type(loaded).__name__ == type(model).__name__
    assert trainable_paths(loaded) == trainable_paths(model)
    assert len(loaded.trainable_variables) == len(model.trainable_variables) > 0
    assert len(loaded.weights) == len(model.weights)
    assert [e.describe() for e in applied_recipes(loaded)] == [
        e.describe() for e in applied_recipes(model)
    ]


def test_a_dpo_policy_round_trips_through_its_causal_lm(inputs, tmp_path):
    # PreferencePolicy's own config holds its causal LM, which saves its recipes.
    policy = DPO(base=LoRA(rank=4)).apply(testing.tiny_causal_lm("gemma3"))
    move_trained_weights(policy)
    loaded = round_trip(policy, tmp_path / "dpo.keras")
    np.testing.assert_array_equal(logits(loaded, inputs), logits(policy, inputs))
    assert trainable_paths(loaded) == trainable_paths(policy)
    assert len(adapter_wrappers(loaded)) == 4


def test_the_saved_config_records_the_recipes_and_the_plain_base(tmp_path):
    model = LoRA(rank=4, alpha=8.0).apply(testing.tiny_causal_lm("gemma3"))
    model.save(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        saved = json.loads(archive.read("config.json"))
    assert saved["registered_name"] == "kerasft>AdaptedModel"
    config = saved["config"]
    assert config["base"]["registered_name"] == "keras_hub>Gemma3CausalLM"
    assert [d["recipe"]["method"] for d in config["recipes"]] == ["lora"]
    assert config["recipes"][0]["recipe"]["alpha"] == 8.0
    assert sorted(config["recipes"][0]["target_paths"]) == [
        f"decoder_block_{i}/attention/{name}" for i in range(2) for name in ("query", "value")
    ]
    assert config["merged"] == []


def test_a_loaded_model_saves_the_same_config_again(inputs, tmp_path):
    model = LoRA(rank=4, targets="attention").apply(testing.tiny_causal_lm("gemma3"))
    move_trained_weights(model)
    loaded = round_trip(model, tmp_path / "first.keras")
    again = round_trip(loaded, tmp_path / "second.keras")
    configs = []
    for name in ("first.keras", "second.keras"):
        with zipfile.ZipFile(tmp_path / name) as archive:
            configs.append(json.loads(archive.read("config.json"))["config"])
    assert configs[0] == configs[1]
    np.testing.assert_array_equal(logits(again, inputs), logits(model, inputs))


def test_trainable_flags_changed_after_apply_are_kept(inputs, tmp_path):
    model = LoRA(rank=4).apply(testing.tiny_causal_lm("gemma3"))
    frozen = [v for v in model.trainable_variables if v.path.endswith("lora_a")]
    for variable in frozen:
        variable.trainable = False
    loaded = round_trip(model, tmp_path / "model.keras")
    assert trainable_paths(loaded) == trainable_paths(model)
    assert len(trainable_paths(loaded)) == 4  # the four lora_b


def test_loaded_lora_model_trains_only_its_adapter(tmp_path):
    x, y, sample_weight = testing.random_token_batch()
    recipe = LoRA(rank=4)
    model = recipe.apply(testing.tiny_causal_lm("gemma3"))
    move_trained_weights(model)  # as after training: B is no longer zero

    loaded = round_trip(model, tmp_path / "model.keras")
    recipe.compile(loaded, learning_rate=1e-2)
    before = weights_by_path(loaded)
    history = loaded.fit(x, y, sample_weight=sample_weight, epochs=4, verbose=0)
    after = weights_by_path(loaded)

    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    adapter = {path for path in before if "_lora/lora_" in path}
    assert len(adapter) == 8
    assert changed == adapter  # every A and B moved, and nothing else
    losses = history.history["loss"]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("make_recipe, float_layers", [
    pytest.param(lambda: LoRA(rank=4), True, id="lora"),
    pytest.param(lambda: IA3(), True, id="ia3"),
    pytest.param(lambda: QAT(mode="int8", group_size=None, targets=("query",)), False, id="qat"),
])
def test_merged_model_round_trips_as_a_plain_model(make_recipe, float_layers, inputs, tmp_path):
    recipe = make_recipe()
    model = recipe.apply(testing.tiny_causal_lm("gemma3"))
    move_trained_weights(model)
    assert kerasft.merge_adapters(model)
    expected = logits(model, inputs)

    loaded = round_trip(model, tmp_path / "merged.keras")

    np.testing.assert_array_equal(logits(loaded, inputs), expected)
    assert adapter_wrappers(loaded) == []
    assert len(loaded.weights) == len(model.weights)
    if float_layers:  # the very layers of the base, no adapter variable left
        assert len(loaded.weights) == len(testing.tiny_causal_lm("gemma3").weights)
    merged, live = split_merged_recipes(loaded)
    # It still knows what was merged into it (load_adapter refuses the same adapter again).
    assert ([e.config["method"] for e in merged], live) == ([recipe.method], [])


def test_requantized_qlora_merge_and_a_lora_on_top_round_trip(inputs, tmp_path):
    model = QLoRA(rank=4, group_size=16).apply(testing.tiny_causal_lm("gemma3"))
    move_trained_weights(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the requantize warning
        kerasft.merge_adapters(model)
    LoRA(rank=2, targets=("key",)).apply(model)
    move_trained_weights(model, seed=1)
    expected = logits(model, inputs)

    loaded = round_trip(model, tmp_path / "model.keras")

    np.testing.assert_array_equal(logits(loaded, inputs), expected)
    assert [type(w).__name__ for w in adapter_wrappers(loaded)] == ["LoRADense"] * 2
    assert trainable_paths(loaded) == trainable_paths(model)
    assert [len(part) for part in split_merged_recipes(loaded)] == [1, 1]


def test_two_adapters_merged_in_turn_into_the_same_layers_round_trip(inputs, tmp_path):
    model = testing.tiny_causal_lm("gemma")
    for seed, rank in enumerate((4, 2)):
        LoRA(rank=rank, targets=("query",)).apply(model)
        move_trained_weights(model, seed=seed)
        kerasft.merge_adapters(model)
    IA3(targets=("query",)).apply(model)  # and a live adapter on those layers too
    move_trained_weights(model, seed=2)
    expected = logits(model, inputs)

    loaded = round_trip(model, tmp_path / "model.keras")

    np.testing.assert_array_equal(logits(loaded, inputs), expected)
    merged, live = split_merged_recipes(loaded)
    assert [e.config["rank"] for e in merged] == [4, 2]
    assert [e.config["method"] for e in live] == ["ia3"]
    assert trainable_paths(loaded) == trainable_paths(model)


def test_named_adapters_keep_their_names_and_weights(inputs, tmp_path):
    model = testing.tiny_causal_lm("gemma3")
    kerasft.add_adapter(model, "a", recipe=LoRA(rank=4))
    move_trained_weights(model)
    kerasft.add_adapter(model, "b", recipe=LoRA(rank=2, targets=("key",)))
    move_trained_weights(model, seed=1)
    expected_b = logits(model, inputs)
    kerasft.set_adapter(model, "a")
    expected_a = logits(model, inputs)

    loaded = round_trip(model, tmp_path / "named.keras")

    assert (adapter_names(loaded), active_adapter(loaded)) == (["a", "b"], "a")
    np.testing.assert_array_equal(logits(loaded, inputs), expected_a)
    kerasft.set_adapter(loaded, "b")
    np.testing.assert_array_equal(logits(loaded, inputs), expected_b)
    kerasft.set_adapter(loaded, "a")
    np.testing.assert_array_equal(logits(loaded, inputs), expected_a)


def test_unknown_recipe_in_the_file_names_file_recipe_and_known_ones(tmp_path):
    model = LoRA(rank=4).apply(testing.tiny_causal_lm("gemma3"))
    good, bad = tmp_path / "good.keras", tmp_path / "bad.keras"
    model.save(good)
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"]["recipes"][0]["recipe"]["method"] = "hyper_lora"
                data = json.dumps(config).encode()
            target.writestr(item, data)

    with pytest.raises(ValueError) as error:
        keras.saving.load_model(bad)
    message = str(error.value)
    assert str(bad) in message
    assert "'hyper_lora'" in message
    assert "known methods: [" in message and "'lora'" in message and "'qlora'" in message


FRESH_PROCESS = textwrap.dedent("""
    import sys
    import keras
    import numpy as np
    path, x_path = sys.argv[1], sys.argv[2]
    try:
        keras.saving.load_model(path)
        print("LOADED WITHOUT KERASFT")
    except Exception as error:
        print("WITHOUT KERASFT:", type(error).__name__, "kerasft>AdaptedModel" in str(error))
    import kerasft  # noqa: F401  (registers kerasft>AdaptedModel)
    model = keras.saving.load_model(path)
    x = dict(np.load(x_path))
    np.save(sys.argv[3], keras.ops.convert_to_numpy(model(x, training=False)))
    print("trainable", len(model.trainable_variables))
""")


def test_fresh_process_with_only_import_kerasft_loads_the_model(inputs, tmp_path):
    model = LoRA(rank=4, targets="attention").apply(testing.tiny_causal_lm("gemma3"))
    move_trained_weights(model)
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "x.npz", **{k: np.asarray(v) for k, v in inputs.items()})
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "model.keras"),
         str(tmp_path / "x.npz"), str(tmp_path / "logits.npy")],
        capture_output=True, text=True, timeout=600, env=env,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Without `import kerasft`: Keras's own unknown-class error, naming kerasft.
    assert "WITHOUT KERASFT: TypeError True" in result.stdout, result.stdout
    assert f"trainable {len(model.trainable_variables)}" in result.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), logits(model, inputs))


def test_the_readme_example_runs_and_round_trips(inputs, tmp_path):
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("### Save the whole model"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("```", start)]
    assert len(code.strip().splitlines()) == 4
    assert code.count('"runs/model.keras"') == 2
    code = code.replace('"runs/model.keras"', repr(str(tmp_path / "model.keras")))
    model = testing.tiny_causal_lm("gemma3")
    namespace = {"model": model, "kerasft": kerasft, "keras": keras}
    exec(compile(code, "README.md", "exec"), namespace)
    loaded = namespace["model"]
    assert loaded is not model
    assert len(adapter_wrappers(loaded)) == 4
    np.testing.assert_array_equal(logits(loaded, inputs), logits(model, inputs))
