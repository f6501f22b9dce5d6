"""Progress bars on the steps a user waits for: tokenising many strings, rounding a model."""

import re

from kerasft import testing
from kerasft.data import encoding
from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer
from kerasft.quantization.quantize_model import quantize_model


def _bar_total(text):
    """The target of the last Keras progress bar line (`12/12`), or None."""
    counts = re.findall(r"(\d+)/(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", text))
    return None if not counts else (int(counts[-1][0]), int(counts[-1][1]))


def test_tokenising_many_strings_shows_a_bar_and_few_do_not(capsys, monkeypatch):
    tokenizer = tiny_gemma_tokenizer()
    texts = [f"word number {i}" for i in range(40)]
    expected = encoding.tokenize_texts(tokenizer, texts, chunk_size=16, progress=False)
    assert capsys.readouterr().out == ""
    shown = encoding.tokenize_texts(tokenizer, texts, chunk_size=16, progress=True)
    assert _bar_total(capsys.readouterr().out) == (40, 40)
    assert all((a == b).all() for a, b in zip(shown, expected))  # same ids with a bar
    monkeypatch.setattr(encoding, "PROGRESS_MIN_TEXTS", 39)  # the default: more than the limit
    encoding.tokenize_texts(tokenizer, texts, chunk_size=16)
    assert _bar_total(capsys.readouterr().out) == (40, 40)
    monkeypatch.setattr(encoding, "PROGRESS_MIN_TEXTS", 40)
    encoding.tokenize_texts(tokenizer, texts, chunk_size=16)
    assert capsys.readouterr().out == ""


def test_round_to_nearest_quantization_shows_a_bar_over_the_blocks(capsys):
    model = testing.tiny_causal_lm("gemma3", num_layers=3)
    report = quantize_model(model, "int8", progress=True)
    assert _bar_total(capsys.readouterr().out) == (3, 3)
    assert report and all(r["output_error"] is None for r in report)
    quantize_model(testing.tiny_causal_lm("gemma3", num_layers=3), "int8", progress=False)
    assert capsys.readouterr().out == ""
