import keras
import keras_hub
import numpy as np
import pytest

from kerasft import testing


def exportable_causal_lm(kind, seed=0):
    """A tiny model transformers can express: Gemma 3 with its post norms, as the real one."""
    if kind == "gemma":
        return testing.tiny_causal_lm("gemma", seed=seed)
    backbone = testing.tiny_gemma3_backbone(
        seed=seed, use_post_attention_norm=True, use_post_ffw_norm=True
    )
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def perturb_adapters(model, seed=1, scale=0.2):
    """Random adapter weights stand in for training: every factor non-zero."""
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        variable.assign(
            np.asarray(keras.ops.convert_to_numpy(variable))
            + rng.normal(0, scale, variable.shape).astype("float32")
        )


@pytest.fixture(params=["gemma3", "gemma"])
def kind(request):
    return request.param
