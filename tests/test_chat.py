"""`kerasft chat` driven through stdin on the tiny model."""

import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import kerasft
from kerasft.chat import ChatSession, main
from kerasft.finetune.models import load_model
from kerasft.recipes import LoRA

SEQUENCE_LENGTH = 40


def _adapter(tmp_path, seed=3):
    model = load_model("tiny", sequence_length=SEQUENCE_LENGTH)
    LoRA(rank=2, targets=["all-linear"]).apply(model)
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    kerasft.save_adapter(model, tmp_path / "a")
    return model


def _reference_answer(model, prompt, max_new_tokens):
    """Greedy decoding on the unpadded sequence, one full forward pass per token."""
    session = ChatSession(model, "gemma", max_new_tokens, SEQUENCE_LENGTH)
    ids = session._tokens(session.template.render_prompt(prompt))
    answer = []
    for _ in range(max_new_tokens):
        x = {"token_ids": np.asarray([ids], "int32"), "padding_mask": np.ones((1, len(ids)), bool)}
        next_id = int(np.argmax(keras.ops.convert_to_numpy(model(x))[0, -1]))
        if next_id in session.stop_ids:
            break
        answer.append(next_id)
        ids.append(next_id)
    return session._text(answer) if answer else ""


def test_chat_answers_with_the_adapter_and_the_base_through_stdin(tmp_path):
    adapted = _adapter(tmp_path)
    prompt = "Define the word cat."
    expected_adapter = _reference_answer(adapted, prompt, 4)
    with kerasft.adapters_disabled(adapted):
        expected_base = _reference_answer(adapted, prompt, 4)
    assert expected_adapter and expected_adapter != expected_base

    stdin = io.StringIO(f"{prompt}\n/base\n{prompt}\n/adapters\n/adapter nope\n/adapter a\n{prompt}\n/quit\n")
    stdout = io.StringIO()
    status = main(["--model", "tiny", "--adapter", f"a={tmp_path / 'a'}", "--max-new-tokens", "4",
                   "--sequence-length", str(SEQUENCE_LENGTH)], stdin=stdin, stdout=stdout)
    assert status == 0
    lines = stdout.getvalue().split("> ")
    assert "Adapter: a" in lines[0]
    assert lines[1] == expected_adapter + "\n"
    assert lines[2] == "[base model]\n"
    assert lines[3] == expected_base + "\n"
    assert lines[4] == "[adapters: a]\n"
    assert lines[5].startswith("[error: No adapter named 'nope'")
    assert lines[6] == "[adapter a]\n"
    assert lines[7] == expected_adapter + "\n"


def test_bad_adapter_argument_is_named():
    status = main(["--model", "tiny", "--adapter", "x="], stdin=io.StringIO(""), stdout=io.StringIO())
    assert status == 2


@pytest.mark.slow
def test_python_m_kerasft_chat_streams_an_answer(tmp_path):
    _adapter(tmp_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "kerasft.chat", "--model", "tiny", "--adapter",
         f"a={tmp_path / 'a'}", "--max-new-tokens", "4", "--sequence-length", str(SEQUENCE_LENGTH)],
        input="Define the word dog.\n", capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    turns = result.stdout.split("> ")
    assert len(turns) == 3 and turns[1].strip()
