"""Activation memory of one training step with and without activation checkpointing.

JAX only: compiles the loss-and-gradient of a Gemma 3 shaped model (random
weights, built here; nothing downloaded) twice, once plain and once with every
decoder block rematerialised (`Recipe.compile(activation_checkpointing=True)`
sets the same), and prints XLA's memory analysis (temporary buffers: the
activations kept for the backward pass) and the step time of each.

    KERAS_BACKEND=jax python bench/activation_checkpointing.py --layers 8 --length 512
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from kerasft import training_forward  # noqa: E402
from kerasft.models import architecture  # noqa: E402


def build(layers, hidden, vocabulary):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=vocabulary, image_size=16, num_layers=layers, num_query_heads=4,
        num_key_value_heads=1, hidden_dim=hidden, intermediate_dim=4 * hidden, head_dim=hidden // 4,
        use_query_key_norm=True, use_sliding_window_attention=True, sliding_window_size=128,
        vision_encoder=None,
    )
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def measure(model, batch, checkpoint):
    architecture.set_activation_checkpointing(model, checkpoint)
    x, y, w = batch
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def loss_fn(trainable):
        out, _ = model.stateless_call(trainable, frozen, x, training=True)
        loss, _, _ = training_forward.weighted_token_loss(
            architecture.token_embedding(model), out[training_forward.HIDDEN_STATES], y, w
        )
        return loss

    def wrapped(trainable):
        mapping = list(zip(model.trainable_variables, trainable)) + list(
            zip(model.non_trainable_variables, frozen))
        with keras.StatelessScope(state_mapping=mapping):
            return loss_fn(trainable)

    step = jax.jit(jax.value_and_grad(wrapped))
    compiled = step.lower(trainable).compile()
    memory = compiled.memory_analysis()
    loss, _ = compiled(trainable)
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(compiled(trainable)[0])
    seconds = (time.perf_counter() - start) / 3
    return float(loss), memory.temp_size_in_bytes, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocabulary", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    args = parser.parse_args()
    model = build(args.layers, args.hidden, args.vocabulary)
    training_forward.install(model)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, args.vocabulary, (args.batch, args.length + 1)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((args.batch, args.length), bool)}
    batch = (x, ids[:, 1:], (rng.uniform(size=(args.batch, args.length)) < 0.3).astype("float32"))
    rows = []
    for checkpoint in (False, True):
        loss, temp, seconds = measure(model, batch, checkpoint)
        rows.append((checkpoint, loss, temp, seconds))
        print(f"activation_checkpointing={checkpoint!s:5}  loss {loss:.6f}  "
              f"XLA temp memory {temp / 2**20:8.1f} MiB  step {seconds:.3f} s")
    print(f"temp memory ratio (checkpointed / plain): {rows[1][2] / rows[0][2]:.3f}; "
          f"step time ratio: {rows[1][3] / rows[0][3]:.2f}")


if __name__ == "__main__":
    main()
