"""kerasft.distribution: fine-tuning on a device mesh equals the single-device run.

JAX reads `XLA_FLAGS=--xla_force_host_platform_device_count=8` only before it
is imported, so the mesh runs happen in one subprocess (this file run as a
script) that trains every case, saves the trained weights, shardings and
logits under a temporary folder, and the tests compare them here.

Training uses SGD: Adam divides every gradient element by its running RMS, so
the float32 summation-order noise of a sharded reduction (~1e-7 relative) on
elements whose gradient is near zero becomes a full-size step; measured, a
sharded AdamW run differs from the single-device one by up to ~3e-5 of a
weight's scale after 3 steps. SGD shows what the distribution itself does to
the gradients. Every run accumulates 2 micro-batches per optimizer step
through `TokenNormalizedBatches` (the token-normalised loss).
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

MESHES = {"data8": {"data": 8}, "model8": {"model": 8}, "data2xmodel4": {"data": 2, "model": 4}}
METHODS = ("lora", "qlora", "full")
DEFAULT_CASES = [("gemma3", "lora", "data2xmodel4")]
SLOW_CASES = [(k, m, mesh) for k in ("gemma", "gemma3") for m in METHODS for mesh in MESHES]

requires_jax = pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution is JAX only")


# ---------------------------------------------------------------- the subprocess
def _model(kind):
    """A one-block model whose sizes divide 8 (Gemma 3: one key/value head, like the 270M)."""
    import keras_hub

    from kerasft import testing

    keras.utils.set_random_seed(0)
    sizes = dict(vocabulary_size=128, num_layers=1, num_query_heads=8, hidden_dim=16,
                 intermediate_dim=32, head_dim=8)
    if kind == "gemma":
        backbone = keras_hub.models.GemmaBackbone(num_key_value_heads=8, **sizes)
        return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    backbone = testing.tiny_gemma3_backbone(num_key_value_heads=1, **sizes)
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def _recipe(method):
    from kerasft.recipes import FullFineTune, LoRA, QLoRA

    if method == "lora":
        return LoRA(rank=4, targets=["attention", "mlp"])
    if method == "qlora":
        return QLoRA(rank=4, targets=["attention", "mlp"], group_size=8)
    return FullFineTune()


def _batches():
    from kerasft import testing

    return [testing.random_token_batch(batch_size=8, sequence_length=8, seed=s, pad_last=3 + s)
            for s in range(2)]


def _train(kind, method, mesh):
    """Applies, compiles (recipe.compile) and fits 2 optimizer steps of 2 micro-batches."""
    import contextlib

    from kerasft import distribution as kd
    from kerasft.losses import TokenNormalizedBatches
    from kerasft.pretokenized import pretokenized

    dist = kd.distribution_from_config(MESHES[mesh]) if mesh else None
    with dist.scope() if dist else contextlib.nullcontext():
        model = _model(kind)
        recipe = _recipe(method)
        model = recipe.apply(model) or model
        recipe.compile(model, gradient_accumulation_steps=2,
                       optimizer=keras.optimizers.SGD(0.5, gradient_accumulation_steps=2))
        with pretokenized(model):
            model.fit(TokenNormalizedBatches(_batches(), 2), epochs=2, verbose=0)
    return model, dist


def _worker(cases, out):
    import jax

    from kerasft import distribution as kd
    from kerasft.adapters import load_adapter, save_adapter

    out = pathlib.Path(out)
    assert jax.device_count() == 8, jax.devices()
    x = _batches()[0][0]
    report = {}
    for kind, method in dict.fromkeys((k, m) for k, m, _ in cases):
        for mesh in [None] + [mesh for k, m, mesh in cases if (k, m) == (kind, method)]:
            model, dist = _train(kind, method, mesh)
            tag = f"{kind}-{method}-{mesh or 'single'}"
            np.savez(out / f"{tag}.npz",
                     **{v.path: np.asarray(v.value) for v in model.trainable_variables})
            if mesh:
                report[tag] = {p: list(s) for p, s in kd.variable_shardings(model).items()}
            if mesh and method == "lora":
                logits = np.asarray(model.predict(x, verbose=0))
                save_adapter(model, out / f"{tag}-adapter")
                unsharded = load_adapter(_model(kind), out / f"{tag}-adapter")
                with dist.scope():
                    sharded = load_adapter(_model(kind), out / f"{tag}-adapter")
                report[f"{tag}-reloaded-sharded"] = {
                    p: list(s) for p, s in kd.variable_shardings(sharded).items()}
                np.savez(out / f"{tag}-logits.npz", trained=logits,
                         unsharded=np.asarray(unsharded.predict(x, verbose=0)),
                         sharded=np.asarray(sharded.predict(x, verbose=0)))
                # A model adapted outside the scope, placed afterwards.
                late = _recipe(method).apply(_model(kind))
                kd.distribute_model(late, dist)
                report[f"{tag}-distributed-later"] = {
                    p: list(s) for p, s in kd.variable_shardings(late).items()}
    (out / "shardings.json").write_text(json.dumps(report))


def _run_worker(cases, out):
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_distribution", str(out), json.dumps(cases)],
        cwd=root, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads((out / "shardings.json").read_text())


# ---------------------------------------------------------------- the checks
def _assert_same_weights(out, kind, method, mesh):
    single = np.load(out / f"{kind}-{method}-single.npz")
    sharded = np.load(out / f"{kind}-{method}-{mesh}.npz")
    assert sorted(single.files) == sorted(sharded.files)
    for path in single.files:
        scale = float(np.max(np.abs(single[path])))
        np.testing.assert_allclose(sharded[path], single[path], rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=f"{kind} {method} {mesh}: {path}")
    # The runs did train: every trained variable moved away from its start.
    assert any(np.max(np.abs(single[p])) > 0 for p in single.files if "lora_b" in p) or (
        method == "full")


# The intended layouts on the (data=2, model=4) mesh of a one-block Gemma 3 with 8 query
# heads and one key/value head (its model axis cannot split: replicated on that side).
EXPECTED_2X4_LORA = {
    "token_embedding/embeddings": ("model", "data"),
    "decoder_block_0/attention/query/kernel": ("model", "data", None),
    "decoder_block_0/attention/key/kernel": (None, "data", None),
    "decoder_block_0/attention/attention_output/kernel": ("model", None, "data"),
    "decoder_block_0/ffw_gating/kernel": ("data", "model"),
    "decoder_block_0/ffw_gating_2/kernel": ("data", "model"),
    "decoder_block_0/ffw_linear/kernel": ("model", "data"),
    "decoder_block_0/attention/query_lora/lora_a": (None, None),
    "decoder_block_0/attention/query_lora/lora_b": (None, "model", None),
    "decoder_block_0/attention/key_lora/lora_b": (None, None, None),
    "decoder_block_0/attention/attention_output_lora/lora_a": ("model", None, None),
    "decoder_block_0/attention/attention_output_lora/lora_b": (None, None),
    "decoder_block_0/ffw_gating_lora/lora_b": (None, "model"),
    "decoder_block_0/ffw_linear_lora/lora_a": ("model", None),
    "decoder_block_0/pre_attention_norm/scale": (None,),
    "final_normalization/scale": (None,),
}
EXPECTED_QLORA = {
    "decoder_block_0/attention/query/kernel_codes": ("data", "model"),
    "decoder_block_0/attention/attention_output/kernel_codes": ("model", "data"),
    "decoder_block_0/ffw_gating/kernel_codes": ("data", "model"),
    "decoder_block_0/ffw_linear/kernel_codes": ("model", "data"),
    "decoder_block_0/attention/query/kernel_scale_codes": (None,),
    "decoder_block_0/attention/query_lora/lora_b": (None, "model", None),
}


def _specs(report, tag):
    return {path: tuple(spec) for path, spec in report[tag].items()}


@requires_jax
def test_lora_on_a_2x4_mesh_equals_one_device_and_reloads(tmp_path):
    report = _run_worker(DEFAULT_CASES, tmp_path)
    _assert_same_weights(tmp_path, "gemma3", "lora", "data2xmodel4")
    tag = "gemma3-lora-data2xmodel4"
    specs = _specs(report, tag)
    for path, expected in EXPECTED_2X4_LORA.items():
        assert specs[path] == expected, (path, specs[path])
    # An adapter loaded into a fresh model under the scope is laid out the same;
    # a model adapted before the scope was entered is placed the same by distribute_model.
    for other in ("reloaded-sharded", "distributed-later"):
        got = _specs(report, f"{tag}-{other}")
        assert {p: got[p] for p in EXPECTED_2X4_LORA} == EXPECTED_2X4_LORA, other
    logits = np.load(tmp_path / f"{tag}-logits.npz")
    np.testing.assert_allclose(logits["unsharded"], logits["trained"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits["sharded"], logits["trained"], rtol=1e-5, atol=1e-5)


@requires_jax
@pytest.mark.slow
def test_every_method_and_mesh_equals_one_device(tmp_path):
    report = _run_worker(SLOW_CASES, tmp_path)
    for kind, method, mesh in SLOW_CASES:
        _assert_same_weights(tmp_path, kind, method, mesh)
        specs = _specs(report, f"{kind}-{method}-{mesh}")
        if mesh == "data8":
            assert all(set(s) == {None} for s in specs.values() if s), (kind, method)
        if mesh == "model8":  # the data axis has size 1: it splits nothing
            assert specs["token_embedding/embeddings"] == ("model", "data")
            query, linear = ("kernel_codes", "kernel_codes") if method == "qlora" else (
                ("kernel", "kernel"))
            assert specs[f"decoder_block_0/attention/query/{query}"] == (
                ("data", "model") if method == "qlora" else ("model", "data", None))
            assert specs[f"decoder_block_0/ffw_linear/{linear}"] == ("model", "data")
        if method == "qlora" and mesh == "data2xmodel4":
            for path, expected in EXPECTED_QLORA.items():
                assert specs[path] == expected, (kind, path, specs[path])
    for kind in ("gemma", "gemma3"):
        logits = np.load(tmp_path / f"{kind}-lora-model8-logits.npz")
        np.testing.assert_allclose(logits["unsharded"], logits["trained"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- in-process checks
@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch refusal")
def test_torch_refuses_naming_the_backend():
    from kerasft import distribution as kd

    with pytest.raises(RuntimeError, match="JAX backend.*Received: backend='torch'"):
        kd.distribution_from_config({"data": 1, "model": 1})
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(RuntimeError, match="backend='torch'"):
        kd.distribute_model(model, distribution=object())


@requires_jax
def test_bad_configs_name_the_value():
    from kerasft import distribution as kd

    assert kd.distribution_from_config(None) is None
    assert len(keras.distribution.list_devices()) != 3
    with pytest.raises(ValueError, match=r"data x model = 3 x 1 = 3, but .* Received"):
        kd.distribution_from_config({"data": 3})
    with pytest.raises(ValueError, match="Received: distribution={'pipeline': 2}"):
        kd.distribution_from_config({"pipeline": 2})
    with pytest.raises(ValueError, match="positive integer. Received: model=0"):
        kd.distribution_from_config({"data": 1, "model": 0})
    mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"),
                                         keras.distribution.list_devices()[:1])
    with pytest.raises(ValueError, match="Received: data_axis='data'"):
        kd.layout_map(mesh)
    with pytest.raises(ValueError, match="Received: lora='split'"):
        kd.layout_map(mesh, lora="split", data_axis="batch")


@requires_jax
def test_fit_layout_replicates_an_axis_that_does_not_divide():
    from kerasft import distribution as kd

    devices = keras.distribution.list_devices()[:1]
    mesh = keras.distribution.DeviceMesh((1, 1), ("data", "model"), devices)
    layout = keras.distribution.TensorLayout(("model", "data", None), mesh)
    assert kd.fit_layout(layout, (1, 640, 256)) is layout  # sizes 1 divide everything
    fake = keras.distribution.DeviceMesh((1, 1), ("data", "model"), devices)
    fake._shape = (2, 4)  # the arithmetic only: a 2 x 4 mesh's axis sizes
    layout = keras.distribution.TensorLayout(("model", "data", None), fake)
    assert tuple(kd.fit_layout(layout, (1, 640, 256)).axes) == (None, "data", None)
    assert tuple(kd.fit_layout(layout, (4, 3, 256)).axes) == ("model", None, None)


if __name__ == "__main__":
    _worker([tuple(case) for case in json.loads(sys.argv[2])], sys.argv[1])
