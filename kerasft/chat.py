"""`python -m kerasft.chat` (and `kerasft chat`): try a base model with its adapters, interactively.

Each line typed is one user turn, rendered with the model's chat template
(`kerasft.data.templates`, Gemma's turn format by default) and answered by
greedy decoding, token by token, printed as it comes. Commands:

- `/adapter NAME`: answer with adapter NAME (`kerasft.adapter_switch.set_adapter`);
- `/base`: answer with the base model (no adapter);
- `/adapters`: list the adapters, marking the active one;
- `/quit` (or end of input): leave.

Adapters are given as `--adapter NAME=FOLDER` (a kerasft adapter folder, a
PEFT adapter folder, or a folder `save_adapters` wrote, which brings all its
names); the first one given is active at the start.

Example:

    python -m kerasft.chat --model gemma3-270m --adapter wordnet=runs/sft_lora/adapter
"""

import argparse
import pathlib
import sys
from typing import Any, TextIO

import numpy as np

COMMANDS = ("/adapter NAME", "/base", "/adapters", "/quit")


def _parser():
    parser = argparse.ArgumentParser(
        prog="kerasft chat", description="Chat with a base model and its adapters."
    )
    parser.add_argument("--model", default="gemma3-270m",
                        help="a kerasft.finetune model name: gemma3-270m or tiny")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=FOLDER",
                        help="an adapter folder under a name (repeatable)")
    parser.add_argument("--template", default="gemma", help="the chat template's name")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sequence-length", type=int, default=256,
                        help="prompt + answer tokens the model sees at most")
    return parser


def _parse_adapter(text):
    name, sep, folder = text.partition("=")
    if not sep:
        folder = text
        name = pathlib.Path(text).name
    if not folder:
        raise ValueError(f"`--adapter` takes NAME=FOLDER. Received: --adapter {text!r}")
    return name, pathlib.Path(folder)


class ChatSession:
    """Greedy, streamed answers of `model` under a chat template.

    Args:
        model: a keras-hub causal LM with a preprocessor (its tokenizer
            decodes the answer).
        template: a `PromptTemplate` or its name.
        max_new_tokens: the longest answer, in tokens.
        sequence_length: prompt + answer tokens (the padded length every
            step runs at, so one trace serves the whole chat).
    """

    def __init__(self, model, template="gemma", max_new_tokens=64, sequence_length=256):
        from kerasft.data.templates import get_template

        if getattr(model, "preprocessor", None) is None:
            raise ValueError(
                "`kerasft chat` needs a model with a preprocessor (its tokenizer). "
                f"Received: model={model.name!r} with preprocessor=None"
            )
        if max_new_tokens < 1 or sequence_length <= max_new_tokens:
            raise ValueError(
                "`max_new_tokens` must be positive and below `sequence_length`. Received: "
                f"max_new_tokens={max_new_tokens}, sequence_length={sequence_length}"
            )
        self.model = model
        self.template = get_template(template)
        self.tokenizer = model.preprocessor.tokenizer
        self.max_new_tokens = max_new_tokens
        self.sequence_length = sequence_length
        self.stop_ids = {self.tokenizer.end_token_id}
        try:
            self.stop_ids.add(int(self.tokenizer.token_to_id("<end_of_turn>")))
        except (KeyError, ValueError, TypeError):
            pass
        self.stop_ids.discard(None)

    def _forward(self, inputs):
        # A direct call: `predict` would send token ids through the
        # preprocessor, and the fixed padded shape keeps one trace per chat.
        import keras

        return keras.ops.convert_to_numpy(self.model(inputs, training=False))

    def _tokens(self, text):
        ids = self.tokenizer(text)
        ids = np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids).reshape(-1).tolist()
        return [self.tokenizer.start_token_id] + [int(i) for i in ids]

    def _text(self, ids):
        text = self.tokenizer.detokenize(np.asarray(ids, "int32"))
        text = text.numpy() if hasattr(text, "numpy") else text
        return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)

    def answer_ids(self, prompt: str, on_token=None) -> list[int]:
        """The greedy answer to `prompt` as token ids (stop token excluded).

        Args:
            prompt: the user's turn, before the template.
            on_token: called with the answer's ids so far after each token.
        """
        ids = self._tokens(self.template.render_prompt(prompt))
        room = self.sequence_length - self.max_new_tokens
        if len(ids) > room:
            # Keep BOS and the end of the prompt, where the answer starts.
            ids = ids[:1] + ids[len(ids) - room + 1:]
        answer = []
        buffer = np.zeros((1, self.sequence_length), "int32")
        mask = np.zeros((1, self.sequence_length), bool)
        buffer[0, : len(ids)] = ids
        mask[0, : len(ids)] = True
        position = len(ids)
        for _ in range(self.max_new_tokens):
            logits = self._forward({"token_ids": buffer, "padding_mask": mask})
            next_id = int(np.argmax(logits[0, position - 1]))
            if next_id in self.stop_ids:
                break
            answer.append(next_id)
            if on_token is not None:
                on_token(answer)
            buffer[0, position] = next_id
            mask[0, position] = True
            position += 1
        return answer

    def answer(self, prompt: str, stream: TextIO | None = None) -> str:
        """The greedy answer to `prompt`, written to `stream` piece by piece as it is decoded."""
        printed = [""]

        def on_token(ids):
            text = self._text(ids)
            # SentencePiece may change the text of earlier pieces (a byte
            # sequence completing); print only what extends what was shown.
            if stream is not None and text.startswith(printed[0]):
                stream.write(text[len(printed[0]):])
                stream.flush()
                printed[0] = text

        ids = self.answer_ids(prompt, on_token)
        text = self._text(ids) if ids else ""
        if stream is not None:
            if text.startswith(printed[0]):
                stream.write(text[len(printed[0]):])
            stream.write("\n")
            stream.flush()
        return text


def run(session: ChatSession, stdin: TextIO, stdout: TextIO, prompt: str = "> ") -> None:
    """The read-answer loop over `stdin` until `/quit` or end of input."""
    from kerasft.adapter_switch import active_adapter, adapter_names, set_adapter

    model = session.model
    stdout.write(f"kerasft chat: {', '.join(COMMANDS)}. Adapter: {active_adapter(model) or 'base'}\n")
    while True:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return
        line = line.strip()
        if not line:
            continue
        if line == "/quit":
            return
        if line == "/base":
            set_adapter(model, None)
            stdout.write("[base model]\n")
        elif line == "/adapters":
            active = active_adapter(model)
            names = [f"{n} (active)" if n == active else n for n in adapter_names(model)]
            stdout.write(f"[adapters: {', '.join(names) or 'none'}]\n")
        elif line.startswith("/adapter"):
            name = line[len("/adapter"):].strip()
            try:
                set_adapter(model, name)
                stdout.write(f"[adapter {name}]\n")
            except ValueError as error:
                stdout.write(f"[error: {error}]\n")
        elif line.startswith("/"):
            stdout.write(f"[unknown command {line.split()[0]!r}; commands: {', '.join(COMMANDS)}]\n")
        else:
            session.answer(line, stdout)


def load_chat_model(model_name: str, adapters: list[tuple[str, Any]], sequence_length: int):
    """The model with every adapter added under its name; the first one active."""
    from kerasft.adapter_switch import (
        NAMED_ADAPTERS_FILE,
        add_adapter,
        adapter_names,
        load_adapters,
        set_adapter,
    )
    from kerasft.finetune.models import load_model

    model = load_model(model_name, sequence_length=sequence_length)
    first = None
    for name, folder in adapters:
        if (folder / NAMED_ADAPTERS_FILE).is_file():
            before = set(adapter_names(model))
            load_adapters(model, folder)
            first = first or next((n for n in adapter_names(model) if n not in before), None)
        else:
            add_adapter(model, name, folder)
            first = first or name
    if first is not None:
        set_adapter(model, first)
    return model


def main(argv: list[str] | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None) -> int:
    """`kerasft chat [--model NAME] [--adapter NAME=FOLDER ...] [--template NAME]`.

    Returns:
        The exit status: 0, or 2 for bad arguments (the message on stderr).
    """
    args = _parser().parse_args(argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    try:
        adapters = [_parse_adapter(text) for text in args.adapter]
        model = load_chat_model(args.model, adapters, args.sequence_length)
        session = ChatSession(model, args.template, args.max_new_tokens, args.sequence_length)
    except (ValueError, FileNotFoundError) as error:
        print(f"kerasft chat: {error}", file=sys.stderr)
        return 2
    run(session, stdin, stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
