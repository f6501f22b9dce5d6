"""The README's Python quick start runs (on the tiny model, with a small sample)."""

import pathlib

import keras
import numpy as np

README = pathlib.Path(__file__).parents[1] / "README.md"


def quick_start_code():
    text = README.read_text()
    start = text.index("```python\n") + len("```python\n")
    return text[start:text.index("```", start)]


def test_the_python_quick_start_runs_and_saves_an_adapter(tmp_path):
    code = quick_start_code()
    swaps = {
        "model = gemma3_from_gguf()": "model = load_model('tiny', sequence_length=48)",
        'data.load_wordnet("train"), 400, seed=0': 'data.load_wordnet("train"), 16, seed=0',
        '"runs/my_adapter"': repr(str(tmp_path / "adapter")),
    }
    for old, new in swaps.items():
        assert old in code, f"the README quick start no longer has {old!r}"
        code = code.replace(old, new)
    namespace = {}
    exec(compile("from kerasft.finetune.models import load_model\n" + code, "README.md", "exec"),
             namespace)
    model = namespace["model"]
    assert (tmp_path / "adapter" / "adapter.safetensors").is_file()
    lora_b = [v for v in model.trainable_variables if v.path.endswith("lora_b")]
    assert lora_b and any(np.any(keras.ops.convert_to_numpy(v) != 0) for v in lora_b)  # the fit trained


def test_every_image_the_readme_shows_is_a_small_png_in_the_repository():
    import re

    text = README.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text) + re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert images, "the README shows no picture (issue 20: it shows a notebook's plot)"
    for image in images:
        path = README.parent / image
        assert not re.match(r"\w+://", image), f"{image}: the README's images live in the repository"
        assert path.is_file(), f"README.md shows {image}, which is not in the repository"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
        assert 1000 < path.stat().st_size < 200_000, (image, path.stat().st_size)
