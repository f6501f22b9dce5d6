"""Instruction-tune a Gemma model with (IA)^3 on WordNet definitions.

    python recipes/ia3.py --model tiny|gemma3-270m [--config recipes/configs/ia3.yaml]

The training loop is `recipes/dora.py`'s; only the config differs.
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

from dora import main  # the sibling script (its folder is on sys.path)

if __name__ == "__main__":
    main("recipes/configs/ia3.yaml")
