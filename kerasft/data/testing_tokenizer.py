"""A tiny real Gemma tokenizer for tests, notebooks and smoke runs.

`tiny_gemma_tokenizer()` trains a small SentencePiece BPE model in memory (well
under a second) and wraps it in a real `keras_hub.models.Gemma3Tokenizer`. It
keeps the conventions of the real Gemma vocabulary that `kerasft.data` relies
on:

- ids 0, 1, 2, 3 are `<pad>`, `<eos>`, `<bos>`, `<unk>` (so
  `tokenizer.pad_token_id == 0`, `end_token_id == 1`, `start_token_id == 2`);
- `<start_of_turn>` and `<end_of_turn>` are single tokens (ids 4 and 5);
- no text normalisation, no dummy prefix and byte fallback, so newlines and
  any Unicode text survive a round trip, as with Gemma's own tokenizer.

The vocabulary has `TINY_TOKENIZER_VOCABULARY_SIZE` (= 512) entries, more than
`kerasft.testing.TINY_VOCABULARY_SIZE`: pair it with a tiny model built with
`vocabulary_size=tokenizer.vocabulary_size()`.
"""

import functools
import io

TINY_TOKENIZER_VOCABULARY_SIZE = 512

# Words used by the hand-checked tests are frequent here so that BPE learns
# them as whole pieces.
_CORPUS = """\
The quick brown fox jumps over the lazy dog.
A cat is a small animal that likes to sleep in the sun.
A dog is an animal that barks.
Define the word cat.
Define the word dog.
Instruction: Say hello.
Response: Hello there.
user
model
Hello world, this is a tiny corpus for a tiny tokenizer.
To be, or not to be, that is the question.
Shall I compare thee to a summer's day?
The definition of a word is a statement of its meaning.
Numbers like 0 1 2 3 4 5 6 7 8 9 appear in text too.
"""


@functools.lru_cache(maxsize=None)
def tiny_sentencepiece_proto(vocabulary_size=TINY_TOKENIZER_VOCABULARY_SIZE):
    """Serialized SentencePiece model proto of the tiny Gemma-style tokenizer.

    The result is cached: training runs once per process and vocabulary size.

    Args:
        vocabulary_size: Number of pieces, including the six special tokens
            and the 256 byte-fallback pieces.

    Returns:
        The model proto as `bytes`.
    """
    import sentencepiece

    if vocabulary_size < 300:
        raise ValueError(
            "`vocabulary_size` must be at least 300 (6 special tokens, 256 "
            f"byte pieces and some merges). Received: vocabulary_size={vocabulary_size}"
        )
    lines = _CORPUS.splitlines() * 20
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocabulary_size,
        model_type="BPE",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "\n"],
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def tiny_gemma_tokenizer(vocabulary_size=TINY_TOKENIZER_VOCABULARY_SIZE):
    """A real `keras_hub.models.Gemma3Tokenizer` over a tiny trained vocabulary.

    Args:
        vocabulary_size: Number of pieces (at least 300).

    Returns:
        A `keras_hub.models.Gemma3Tokenizer` (text only, no vision tokens)
        with `start_token_id == 2`, `end_token_id == 1`, `pad_token_id == 0`.
    """
    import keras_hub

    return keras_hub.models.Gemma3Tokenizer(
        proto=tiny_sentencepiece_proto(vocabulary_size), has_vision_tokens=False
    )
