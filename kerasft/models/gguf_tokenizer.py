"""SentencePiece tokenizers to and from GGUF vocabularies.

llama.cpp stores a SentencePiece ("llama") vocabulary as three parallel
arrays, `tokenizer.ggml.tokens`, `tokenizer.ggml.scores` and
`tokenizer.ggml.token_type`, plus the special token ids. The original
`tokenizer.model` is not kept, so `sentencepiece_proto_from_gguf` rebuilds an
equivalent SentencePiece `ModelProto` from them, and
`gguf_vocabulary_from_sentencepiece` goes the other way for export.

Two llama.cpp conventions (`convert_hf_to_gguf.py`, `_create_vocab_sentencepiece`)
are undone here:

- Tokens listed in the Hugging Face `added_tokens_decoder` are re-typed:
  "special" ones become CONTROL (for Gemma 3: `<unk>`, `<mask>`,
  `<start_of_turn>`, `<end_of_turn>`, `<unusedN>`), the others USER_DEFINED
  with their `▁` written as plain spaces. In SentencePiece a CONTROL piece can
  never be produced from text, so only `<bos>`, `<eos>` and `<pad>` stay
  CONTROL; the other CONTROL tokens become USER_DEFINED, which is how Gemma's
  own `tokenizer.model` types them (its chat template writes
  `<start_of_turn>` as plain text), and the unknown token becomes UNKNOWN.
- Spaces in USER_DEFINED tokens are turned back into `▁`, the whitespace
  symbol SentencePiece matches against.
"""

from sentencepiece import sentencepiece_model_pb2

_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece
# GGUF's `gguf.TokenType` uses the same numbers as SentencePiece's piece types
# (NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, UNUSED=5, BYTE=6).
_KNOWN_TOKEN_TYPES = {
    _PIECE.NORMAL,
    _PIECE.UNKNOWN,
    _PIECE.CONTROL,
    _PIECE.USER_DEFINED,
    _PIECE.UNUSED,
    _PIECE.BYTE,
}
_WHITESPACE_SYMBOL = "\u2581"  # "▁"


def sentencepiece_proto_from_gguf(metadata) -> bytes:
    """Rebuilds a serialized SentencePiece model from a GGUF vocabulary.

    Args:
        metadata: The GGUF metadata as a dict (`kerasft.models.gguf_reader.
            read_gguf(path).metadata`) of a file with a SentencePiece
            (`tokenizer.ggml.model == "llama"`) vocabulary.

    Returns:
        The serialized `ModelProto`, ready for
        `keras_hub.models.Gemma3Tokenizer(proto=...)` or
        `sentencepiece.SentencePieceProcessor(model_proto=...)`.

    Raises:
        ValueError: If the vocabulary is missing, is not a SentencePiece one,
            or its arrays or special ids are inconsistent.
    """
    model = metadata.get("tokenizer.ggml.model")
    if model != "llama":
        raise ValueError(
            "Only SentencePiece GGUF vocabularies can be converted. Received: "
            f"tokenizer.ggml.model={model!r} (expected 'llama')."
        )
    tokens = metadata.get("tokenizer.ggml.tokens")
    scores = metadata.get("tokenizer.ggml.scores")
    token_types = metadata.get("tokenizer.ggml.token_type")
    if tokens is None or scores is None or token_types is None:
        raise ValueError(
            "The GGUF vocabulary needs `tokenizer.ggml.tokens`, "
            "`tokenizer.ggml.scores` and `tokenizer.ggml.token_type`. "
            f"Received: tokens={tokens is not None}, scores={scores is not None}, "
            f"token_type={token_types is not None}."
        )
    if not len(tokens) == len(scores) == len(token_types):
        raise ValueError(
            "GGUF vocabulary arrays differ in length. Received: "
            f"len(tokens)={len(tokens)}, len(scores)={len(scores)}, "
            f"len(token_type)={len(token_types)}."
        )

    special_ids = {}
    for name in ("bos", "eos", "unknown", "padding"):
        token_id = metadata.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise ValueError(
                f"`tokenizer.ggml.{name}_token_id` is outside the vocabulary of "
                f"{len(tokens)} tokens. Received: {name}_token_id={token_id}."
            )
        special_ids[name] = token_id
    if special_ids["unknown"] is None:
        raise ValueError(
            "SentencePiece needs an unknown token. Received: no "
            "`tokenizer.ggml.unknown_token_id` in the GGUF metadata."
        )
    control_ids = {
        special_ids[name]
        for name in ("bos", "eos", "padding")
        if special_ids[name] is not None
    }

    proto = sentencepiece_model_pb2.ModelProto()
    has_bytes = False
    for token_id, (token, score, token_type) in enumerate(
        zip(tokens, scores, token_types)
    ):
        token_type = int(token_type)
        if token_type not in _KNOWN_TOKEN_TYPES:
            raise ValueError(
                f"Unknown GGUF token type for token {token_id} ({token!r}). "
                f"Received: token_type={token_type}."
            )
        if token_id == special_ids["unknown"]:
            token_type = _PIECE.UNKNOWN
        elif token_type == _PIECE.UNKNOWN:
            # Only one piece may be UNKNOWN; this one is not the unknown id.
            token_type = _PIECE.CONTROL
        if token_type == _PIECE.CONTROL and token_id not in control_ids:
            token_type = _PIECE.USER_DEFINED
        if token_type == _PIECE.USER_DEFINED:
            token = token.replace(" ", _WHITESPACE_SYMBOL)
        has_bytes |= token_type == _PIECE.BYTE
        proto.pieces.add(piece=token, score=float(score), type=token_type)

    trainer = proto.trainer_spec
    trainer.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = has_bytes
    trainer.unk_id = special_ids["unknown"]
    trainer.unk_piece = proto.pieces[special_ids["unknown"]].piece
    for name, prefix in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        token_id = special_ids[name]
        setattr(trainer, f"{prefix}_id", -1 if token_id is None else token_id)
        if token_id is not None:
            setattr(trainer, f"{prefix}_piece", proto.pieces[token_id].piece)

    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(
        metadata.get("tokenizer.ggml.add_space_prefix", True)
    )
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()


def gguf_vocabulary_from_sentencepiece(proto: bytes) -> dict:
    """Turns a serialized SentencePiece model into GGUF vocabulary fields.

    The inverse of `sentencepiece_proto_from_gguf` for the models it builds:
    BPE, identity normalisation, whitespace escaped as `▁`.

    Args:
        proto: A serialized SentencePiece `ModelProto`, e.g.
            `keras_hub.models.Gemma3Tokenizer(...).proto`.

    Returns:
        A dict with `tokens`, `scores`, `token_types` (lists), `bos_id`,
        `eos_id`, `unknown_id`, `padding_id` (ints, or `None` when the model
        has none) and `add_space_prefix` (bool).

    Raises:
        ValueError: If the model is not a BPE model with identity
            normalisation, which a GGUF "llama" vocabulary cannot describe.
    """
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    trainer = model.trainer_spec
    if trainer.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        raise ValueError(
            "Only BPE SentencePiece models can be written to GGUF. Received: "
            f"model_type={sentencepiece_model_pb2.TrainerSpec.ModelType.Name(trainer.model_type)}."
        )
    normalizer = model.normalizer_spec
    if normalizer.precompiled_charsmap or normalizer.name not in ("identity", ""):
        raise ValueError(
            "Only SentencePiece models without text normalisation can be written "
            f"to GGUF. Received: normalizer_spec.name={normalizer.name!r}."
        )

    tokens, scores, token_types = [], [], []
    for piece in model.pieces:
        token = piece.piece
        if piece.type == _PIECE.USER_DEFINED:
            token = token.replace(_WHITESPACE_SYMBOL, " ")
        tokens.append(token)
        scores.append(float(piece.score))
        token_types.append(int(piece.type))

    def optional_id(token_id):
        return None if token_id < 0 else int(token_id)

    return {
        "tokens": tokens,
        "scores": scores,
        "token_types": token_types,
        "bos_id": optional_id(trainer.bos_id),
        "eos_id": optional_id(trainer.eos_id),
        "unknown_id": optional_id(trainer.unk_id),
        "padding_id": optional_id(trainer.pad_id),
        "add_space_prefix": bool(normalizer.add_dummy_prefix),
    }
