"""Instruction-tune a Gemma model with prefix tuning on WordNet definitions.

    python recipes/prefix_tuning.py --model tiny|gemma3-270m [--config recipes/configs/prefix_tuning.yaml]

The training loop is `recipes/dora.py`'s; only the config differs. For
inference without the prefix MLP, `PrefixTuning.fold(model)` after training.
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

from dora import main  # the sibling script (its folder is on sys.path)

if __name__ == "__main__":
    main("recipes/configs/prefix_tuning.yaml")
