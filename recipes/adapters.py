"""Instruction-tune a Gemma model with Houlsby bottleneck adapters on WordNet definitions.

    python recipes/adapters.py --model tiny|gemma3-270m [--config recipes/configs/adapters.yaml]

The training loop is `recipes/dora.py`'s; only the config differs.
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

from dora import main  # the sibling script (its folder is on sys.path)

if __name__ == "__main__":
    main("recipes/configs/adapters.yaml")
