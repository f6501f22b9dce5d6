"""Instruction-tune a Gemma model with prompt tuning or P-tuning on WordNet definitions.

    python recipes/prompt_tuning.py --model tiny|gemma3-270m                 # prompt tuning
    python recipes/prompt_tuning.py --config recipes/configs/ptuning.yaml    # P-tuning

The training loop is `recipes/dora.py`'s; only the config differs. The saved
adapter holds only the virtual tokens (and the P-tuning encoder).
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

from dora import main  # the sibling script (its folder is on sys.path)

if __name__ == "__main__":
    main("recipes/configs/prompt_tuning.yaml")
