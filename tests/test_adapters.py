import json

import numpy as np
import pytest

import kerasft
from kerasft import testing
from kerasft.recipes import Freeze, LoRA
from kerasft.recipes.lora import lora_layers
from tests.conftest import to_numpy, weights_by_path


def trained_lora_model(kind, recipe, seed=0):
    model = testing.tiny_causal_lm(kind, seed=seed)
    recipe.apply(model)
    rng = np.random.default_rng(7)
    # Random adapter weights stand in for training: every tensor non-zero.
    for wrapper in lora_layers(model):
        wrapper.lora_b.assign(rng.normal(size=wrapper.lora_b.shape).astype("float32") * 0.1)
    return model


@pytest.mark.parametrize(
    "recipe",
    [
        LoRA(),
        LoRA(rank=3, alpha=5.0, targets=("ffw_linear",)),
        LoRA(rank=4, alpha=4.0, targets=("decoder_block_1*",), use_rslora=True),
    ],
    ids=["default", "ffw_linear-alpha", "glob-rslora"],
)
def test_save_then_load_into_a_fresh_model_gives_equal_outputs(model_kind, batch, recipe, tmp_path):
    model = trained_lora_model(model_kind, recipe)
    x, _, _ = batch
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "kerasft_adapter.json").read_text())
    assert config["method"] == "lora"
    assert config["recipe"]["alpha"] == recipe.alpha
    assert config["recipe"]["use_rslora"] == recipe.use_rslora
    assert config["target_paths"] == [w.target_path for w in lora_layers(model)]

    fresh = testing.tiny_causal_lm(model_kind)
    kerasft.load_adapter(fresh, tmp_path)
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)


def test_loading_into_a_different_base_names_the_difference(tmp_path):
    model = trained_lora_model("gemma3", LoRA())
    kerasft.save_adapter(model, tmp_path)
    other = testing.tiny_causal_lm("gemma3", num_layers=3)
    with pytest.raises(ValueError, match="num_layers: adapter base has 2, this model has 3"):
        kerasft.load_adapter(other, tmp_path)


def test_a_file_with_a_missing_tensor_is_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = trained_lora_model("gemma", LoRA())
    kerasft.save_adapter(model, tmp_path)
    tensors = load_file(str(tmp_path / "adapter.safetensors"))
    tensors.pop("decoder_block_1/attention/value/lora_b")
    save_file(tensors, str(tmp_path / "adapter.safetensors"))
    with pytest.raises(ValueError, match="decoder_block_1/attention/value/lora_b"):
        kerasft.load_adapter(testing.tiny_causal_lm("gemma"), tmp_path)


def test_merge_equals_unmerged_and_twice_changes_nothing(model_kind, batch):
    model = trained_lora_model(model_kind, LoRA(rank=4, targets=("attention", "mlp")))
    x, _, _ = batch
    expected = to_numpy(model(x))
    merged = kerasft.merge_adapters(model)
    assert len(merged) == 14
    assert not lora_layers(model)
    assert not any("lora" in v.path for v in model.weights)
    np.testing.assert_allclose(to_numpy(model(x)), expected, atol=1e-5)
    weights = weights_by_path(model)
    assert kerasft.merge_adapters(model) == []
    for path, value in weights_by_path(model).items():
        np.testing.assert_array_equal(value, weights[path])


def test_a_fresh_lora_after_merging_starts_trainable(batch):
    model = trained_lora_model("gemma3", LoRA())
    kerasft.merge_adapters(model)
    LoRA().apply(model)
    for wrapper in lora_layers(model):
        assert np.abs(to_numpy(wrapper.lora_a)).max() > 0
        assert np.abs(to_numpy(wrapper.lora_b)).max() == 0


def test_freeze_recipe_saves_and_loads_its_trained_block(batch, tmp_path):
    model = testing.tiny_causal_lm("gemma3")
    Freeze(trainable=[-1]).apply(model)
    for v in model.trainable_weights:
        v.assign(to_numpy(v) + 0.5)
    x, _, _ = batch
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path)
    fresh = testing.tiny_causal_lm("gemma3")
    kerasft.load_adapter(fresh, tmp_path)
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)


def test_saving_without_a_recipe_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no kerasft recipe"):
        kerasft.save_adapter(testing.tiny_causal_lm("gemma"), tmp_path)


# --- Issue 13: merges, composition, failed loads, file integrity ---------------------

import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402

from kerasft.quantization import quantize_model  # noqa: E402
from kerasft.recipes import IA3, Classifier, PrefixTuning, QLoRA  # noqa: E402
from kerasft.recipes.base import applied_recipe_config  # noqa: E402
from kerasft.targeting import adapter_wrappers, iter_layers  # noqa: E402


def perturb(model, seed=3):
    """Random values in every trainable weight: stands in for a training run."""
    rng = np.random.default_rng(seed)
    for variable in model.trainable_weights:
        variable.assign(to_numpy(variable) + rng.normal(size=variable.shape).astype("float32") * 0.1)


def structure(model):
    """Layer classes by path and every trainable flag: what a failed load must not change."""
    layers = [(layer.path, type(layer).__name__, layer.trainable) for layer in iter_layers(model)]
    flags = {v.path: v.trainable for v in model.weights}
    return layers, flags


def edit_config(directory, change):
    path = directory / "kerasft_adapter.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def test_saving_after_a_merge_is_refused_and_keeps_the_good_file(model_kind, tmp_path):
    kerasft.save_adapter(trained_lora_model(model_kind, LoRA()), tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model = testing.tiny_causal_lm(model_kind)
    kerasft.load_adapter(model, tmp_path)
    kerasft.merge_adapters(model)
    with pytest.raises(ValueError, match=r"merged into the base.*decoder_block_0/attention/query.*"
                                         r"nothing is left to save.*[Ss]ave .*before merging"):
        kerasft.save_adapter(model, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    kerasft.load_adapter(testing.tiny_causal_lm(model_kind), tmp_path)


def test_loading_onto_a_model_that_has_the_adapter_merged_is_refused(model_kind, batch, tmp_path):
    x, _, _ = batch
    kerasft.save_adapter(trained_lora_model(model_kind, LoRA()), tmp_path)
    model = testing.tiny_causal_lm(model_kind)
    kerasft.load_adapter(model, tmp_path)
    kerasft.merge_adapters(model)
    expected = to_numpy(model(x))
    with pytest.raises(ValueError, match=r"merged into it.*lora.*decoder_block_0/attention/query"):
        kerasft.load_adapter(model, tmp_path)
    assert not adapter_wrappers(model)
    np.testing.assert_array_equal(to_numpy(model(x)), expected)


def test_an_adapter_trained_on_a_merged_base_needs_that_merged_base(batch, tmp_path):
    x, _, _ = batch
    kerasft.save_adapter(trained_lora_model("gemma3", LoRA()), tmp_path / "first")
    model = testing.tiny_causal_lm("gemma3")
    kerasft.load_adapter(model, tmp_path / "first")
    kerasft.merge_adapters(model)
    LoRA(rank=2, targets=("key",)).apply(model)
    perturb(model)
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path / "second")
    with pytest.raises(ValueError, match=r"trained on a base with adapters merged.*lora"):
        kerasft.load_adapter(testing.tiny_causal_lm("gemma3"), tmp_path / "second")
    base = testing.tiny_causal_lm("gemma3")
    kerasft.load_adapter(base, tmp_path / "first")
    kerasft.merge_adapters(base)
    kerasft.load_adapter(base, tmp_path / "second")
    np.testing.assert_allclose(to_numpy(base(x)), expected, atol=1e-6)


def test_two_lora_recipes_compose_and_reload_each_with_its_own_scale(model_kind, batch, tmp_path):
    x, _, _ = batch
    model = testing.tiny_causal_lm(model_kind)
    LoRA(rank=4, alpha=16, targets=("query",)).apply(model)
    perturb(model, seed=1)
    LoRA(rank=4, alpha=64, targets=("key",)).apply(model)
    perturb(model, seed=2)
    scales = {w.target_path: w.scale for w in lora_layers(model)}
    assert {s for p, s in scales.items() if p.endswith("query")} == {4.0}
    assert {s for p, s in scales.items() if p.endswith("key")} == {16.0}
    trainable = {v.path for v in model.trainable_weights}
    assert trainable and all("key" in path for path in trainable)
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path)
    fresh = kerasft.load_adapter(testing.tiny_causal_lm(model_kind), tmp_path)
    assert {w.target_path: w.scale for w in lora_layers(fresh)} == scales
    assert {v.path for v in fresh.trainable_weights} == trainable
    np.testing.assert_allclose(to_numpy(fresh(x)), expected, atol=1e-5)


def test_lora_then_ia3_saves_and_reloads_with_equal_outputs(model_kind, batch, tmp_path):
    x, _, _ = batch
    model = testing.tiny_causal_lm(model_kind)
    LoRA(rank=2, targets=("query",)).apply(model)
    perturb(model, seed=1)
    IA3(targets=("value", "ffw_linear")).apply(model)
    perturb(model, seed=2)
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "kerasft_adapter.json").read_text())
    assert [entry["recipe"]["method"] for entry in config["recipes"]] == ["lora", "ia3"]
    assert "rank_pattern" not in config["recipes"][1]["recipe"]
    fresh = kerasft.load_adapter(testing.tiny_causal_lm(model_kind), tmp_path)
    np.testing.assert_allclose(to_numpy(fresh(x)), expected, atol=1e-5)


@pytest.mark.parametrize("digest", [True, False], ids=["with-digest", "without-digest"])
def test_a_truncated_weights_file_changes_nothing_and_a_retry_loads(model_kind, batch, tmp_path, digest):
    x, _, _ = batch
    model = trained_lora_model(model_kind, LoRA())
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path / "good")
    shutil.copytree(tmp_path / "good", tmp_path / "bad")
    weights = tmp_path / "bad" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    if not digest:  # a file from before the digest was stored
        edit_config(tmp_path / "bad", lambda config: config.pop("weights_sha256", None))
    fresh = testing.tiny_causal_lm(model_kind)
    before, shape = weights_by_path(fresh), structure(fresh)
    with pytest.raises(ValueError, match=re.escape(str(weights))):
        kerasft.load_adapter(fresh, tmp_path / "bad")
    after = weights_by_path(fresh)
    assert after.keys() == before.keys() and structure(fresh) == shape
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value)
    assert applied_recipe_config(fresh) is None
    kerasft.load_adapter(fresh, tmp_path / "good")
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)


def test_a_load_that_fails_after_applying_puts_the_model_back(batch, tmp_path):
    x, _, _ = batch
    model = testing.tiny_causal_lm("gemma")
    QLoRA(rank=2, group_size=16, targets=("query",), quantize_embedding=True).apply(model)
    perturb(model)
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path / "good")
    shutil.copytree(tmp_path / "good", tmp_path / "bad")

    def other_rank(config):  # the weights no longer fit the recipe: found only after applying
        config["recipe"]["rank"] = 3
        for entry in config.get("recipes", []):
            entry["recipe"]["rank"] = 3

    edit_config(tmp_path / "bad", other_rank)
    fresh = testing.tiny_causal_lm("gemma")
    before, shape = weights_by_path(fresh), structure(fresh)
    embedding = fresh.backbone.token_embedding
    with pytest.raises(ValueError, match="Shape mismatch"):
        kerasft.load_adapter(fresh, tmp_path / "bad")
    assert fresh.backbone.token_embedding is embedding
    assert structure(fresh) == shape and weights_by_path(fresh).keys() == before.keys()
    assert applied_recipe_config(fresh) is None
    kerasft.load_adapter(fresh, tmp_path / "good")
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)


def test_corrupt_bytes_of_the_same_length_are_refused(tmp_path):
    kerasft.save_adapter(trained_lora_model("gemma", LoRA()), tmp_path)
    weights = tmp_path / "adapter.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)  # the end of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"SHA-256.*{re.escape(str(weights))}"):
        kerasft.load_adapter(testing.tiny_causal_lm("gemma"), tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_are_written_with_the_process_umask(tmp_path, umask):
    from kerasft.adapters import save_tensors

    previous = os.umask(umask)
    try:
        kerasft.save_adapter(trained_lora_model("gemma", LoRA()), tmp_path)
        save_tensors({"step": np.zeros(())}, tmp_path / "checkpoint.safetensors")
    finally:
        os.umask(previous)
    for name in ("adapter.safetensors", "kerasft_adapter.json", "checkpoint.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_stale_temp_files_of_a_killed_write_are_removed_on_the_next_save(tmp_path):
    stale = [tmp_path / ".adapter.safetensors.k1ll3d.tmp", tmp_path / ".kerasft_adapter.json.x.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 4096)
    other = tmp_path / ".notes.txt.abc.tmp"
    other.write_text("not ours")
    kerasft.save_adapter(trained_lora_model("gemma", LoRA()), tmp_path)
    assert not any(path.exists() for path in stale)
    assert other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".notes.txt.abc.tmp", "adapter.safetensors", "kerasft_adapter.json"]
    )


def test_a_lora_adapter_is_refused_on_a_quantized_base(model_kind, tmp_path):
    kerasft.save_adapter(trained_lora_model(model_kind, LoRA()), tmp_path)
    base = testing.tiny_causal_lm(model_kind)
    quantize_model(base, "nf4", group_size=16)
    shape = structure(base)
    with pytest.raises(ValueError, match=r"decoder_block_0/attention/query.*nf4"):
        kerasft.load_adapter(base, tmp_path)
    assert structure(base) == shape and not adapter_wrappers(base)


@pytest.mark.parametrize(
    "second", [LoRA(), LoRA(use_dora=True), LoRA(targets=("attention",))], ids=["lora", "dora", "overlap"]
)
def test_a_second_recipe_on_wrapped_layers_says_they_carry_an_adapter(second):
    model = testing.tiny_causal_lm("gemma")
    LoRA().apply(model)
    with pytest.raises(ValueError, match=r"already carr.* adapter.*recipe lora.*decoder_block_0/attention/query"):
        second.apply(model)


def test_loading_onto_an_adapted_model_says_it_has_a_recipe_applied(tmp_path):
    kerasft.save_adapter(trained_lora_model("gemma", LoRA()), tmp_path)
    model = testing.tiny_causal_lm("gemma")
    LoRA(targets=("key",)).apply(model)
    with pytest.raises(ValueError, match=r"already has .*recipe.* applied.*lora"):
        kerasft.load_adapter(model, tmp_path)


def test_unreadable_adapter_files_are_named(tmp_path):
    kerasft.save_adapter(trained_lora_model("gemma", LoRA()), tmp_path)
    config = tmp_path / "kerasft_adapter.json"
    text = config.read_text()
    config.write_text(text[:-20])
    with pytest.raises(ValueError, match=re.escape(str(config))):
        kerasft.load_adapter(testing.tiny_causal_lm("gemma"), tmp_path)
    config.write_text(text)
    edit_config(tmp_path, lambda c: c.pop("weights_sha256", None))
    weights = tmp_path / "adapter.safetensors"
    weights.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match=re.escape(str(weights))):
        kerasft.load_adapter(testing.tiny_causal_lm("gemma"), tmp_path)


OLD_FORMAT_KEYS = ("method", "recipe", "target_paths", "ranks", "dtype", "kerasft_version",
                   "base_model_class", "base_model_fingerprint", "base_model_config")


@pytest.mark.parametrize("recipe", [LoRA(rank=3, targets=("ffw_linear",)), IA3()], ids=["lora", "ia3"])
def test_a_single_recipe_file_of_the_old_format_still_loads(batch, tmp_path, recipe):
    x, _, _ = batch
    model = testing.tiny_causal_lm("gemma3")
    recipe.apply(model)
    perturb(model)
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path)

    def old_format(config):
        for key in list(config):
            if key not in OLD_FORMAT_KEYS:
                del config[key]
        if config["method"] != "lora":  # the old writer listed LoRA targets only
            config["target_paths"], config["ranks"] = [], {}

    edit_config(tmp_path, old_format)
    fresh = kerasft.load_adapter(testing.tiny_causal_lm("gemma3"), tmp_path)
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)


@pytest.mark.parametrize(
    "make_recipes",
    [
        lambda: [Freeze(trainable=[-1]), LoRA(rank=2, targets=("query",))],
        lambda: [LoRA(rank=2, targets=("query",)), Classifier(3)],
        lambda: [PrefixTuning(2, reparameterize=False), LoRA(rank=2, targets=("all-linear",))],
    ],
    ids=["freeze-lora", "lora-classifier", "prefix-lora"],
)
def test_stacked_recipes_save_and_reload_every_ones_weights(batch, tmp_path, make_recipes):
    x, _, _ = batch
    model = testing.tiny_causal_lm("gemma3")
    for seed, recipe in enumerate(make_recipes()):
        model = recipe.apply(model)
        perturb(model, seed=seed)
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path)
    fresh = kerasft.load_adapter(testing.tiny_causal_lm("gemma3"), tmp_path)
    np.testing.assert_allclose(to_numpy(fresh(x)), expected, atol=1e-5)
    assert {v.path for v in fresh.trainable_weights} == {v.path for v in model.trainable_weights}


def test_saving_after_qat_conversion_is_refused(tmp_path):
    from kerasft.recipes import QAT

    model = testing.tiny_causal_lm("gemma")
    recipe = QAT(mode="int8", group_size=None, targets=("query",))
    recipe.apply(model)
    recipe.convert(model)
    with pytest.raises(ValueError, match=r"merged into the base.*qat"):
        kerasft.save_adapter(model, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "make_recipe",
    [
        lambda: __import__("kerasft.recipes", fromlist=["IA3"]).IA3(),
        lambda: LoRA(rank=2, targets=("query",), use_dora=True),
        lambda: __import__("kerasft.recipes", fromlist=["Adapters"]).Adapters(bottleneck=2),
    ],
    ids=["ia3", "dora", "bottleneck"],
)
def test_wrapper_weights_are_keyed_by_their_layer_path_and_older_files_still_load(
    make_recipe, batch, tmp_path
):
    from safetensors.numpy import load_file, save_file

    from kerasft.tensor_files import tensor_sha256
    from kerasft.targeting import adapter_wrappers, parent_path

    x, _, _ = batch
    model = testing.tiny_causal_lm("gemma3")
    make_recipe().apply(model)
    perturb(model)
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path / "new")
    tensors = load_file(str(tmp_path / "new" / "adapter.safetensors"))
    wrappers = adapter_wrappers(model)
    assert {parent_path(key) for key in tensors} == {w.target_path for w in wrappers}
    fresh = kerasft.load_adapter(testing.tiny_causal_lm("gemma3"), tmp_path / "new")
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)

    # Files written before held these weights under their variable paths.
    owned = {key: v for w in wrappers for key, v in w.adapter_weights().items()}
    old = {owned[key].path: array for key, array in tensors.items()}
    assert not set(old) & set(tensors)
    (tmp_path / "old").mkdir()
    save_file(old, str(tmp_path / "old" / "adapter.safetensors"), metadata={"format": "kerasft"})
    config = json.loads((tmp_path / "new" / "kerasft_adapter.json").read_text())
    config["weights_sha256"] = {key: tensor_sha256(array) for key, array in old.items()}
    (tmp_path / "old" / "kerasft_adapter.json").write_text(json.dumps(config))
    fresh = kerasft.load_adapter(testing.tiny_causal_lm("gemma3"), tmp_path / "old")
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)


def test_folders_with_the_old_config_name_still_load_and_peft_folders_are_named(tmp_path):
    """kerasft's config was `adapter_config.json` (PEFT's name) before; it is still read."""
    model = trained_lora_model("gemma", LoRA())
    x, _, _ = testing.random_token_batch()
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path / "old")
    assert not (tmp_path / "old" / "adapter_config.json").exists()
    (tmp_path / "old" / "kerasft_adapter.json").rename(tmp_path / "old" / "adapter_config.json")
    fresh = kerasft.load_adapter(testing.tiny_causal_lm("gemma"), tmp_path / "old")
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)
    # Saving again into the old folder leaves one config, under the new name.
    kerasft.save_adapter(model, tmp_path / "old")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == [
        "adapter.safetensors", "kerasft_adapter.json"]

    peft_folder = tmp_path / "peft"
    peft_folder.mkdir()
    (peft_folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (peft_folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="PEFT adapter.*load_peft_adapter"):
        kerasft.load_adapter(testing.tiny_causal_lm("gemma"), peft_folder)
