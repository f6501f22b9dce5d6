"""How llama.cpp lays out a Gemma 3 in a GGUF file, for the loader and the exporter.

`gemma3_gguf_tensor_specs` pairs every `Gemma3Backbone` weight with its GGUF
tensor (name, shape, layout conversion both ways) and
`gemma3_backbone_config_from_gguf` reads the backbone's configuration from the
GGUF metadata; `gemma3_gguf.gemma3_from_gguf` and
`gemma3_gguf_export.write_gemma3_gguf` are the two directions over it.

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

import numpy as np

GEMMA3_ARCHITECTURE = "gemma3"

# keras-hub's Gemma3Backbone hard-codes these (see `Gemma3Backbone.__init__`):
# sliding-window ("local") layers use RoPE base 10k, every 6th layer is a
# global layer with RoPE base 1M. llama.cpp hard-codes the same for gemma3.
GLOBAL_ROPE_BASE = 1_000_000.0
LOCAL_ROPE_BASE = 10_000.0
_SLIDING_WINDOW_PATTERN = 6
# llama.cpp scales Gemma 3 27B (62 layers) queries by 1/sqrt(hidden/heads)
# instead of 1/sqrt(head_dim) (`query_pre_attn_scalar` in the HF config).
LAYERS_WITH_HIDDEN_QUERY_SCALE = 62

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



@dataclasses.dataclass(frozen=True)
class GGUFTensorSpec:
    """How one GGUF tensor maps onto one keras variable.

    Attributes:
        name: llama.cpp tensor name, e.g. `"blk.0.attn_q.weight"`.
        variable: The keras-hub variable it fills.
        kind: One of `"embedding"`, `"norm"`, `"dense"`, `"qkv"`,
            `"attention_output"`; selects the layout conversion.
        layer_shape: The float kernel / table shape when `variable` is the
            `blocks` of a GGUF layer; None when it is the float variable.
    """

    name: str
    variable: object
    kind: str
    layer_shape: tuple = None

    @property
    def keras_shape(self):
        """Shape of the float keras variable (kernel, table or scale)."""
        return self.layer_shape or tuple(self.variable.shape)

    @property
    def gguf_shape(self):
        """Shape of the dequantized GGUF array (slowest axis first)."""
        shape = self.keras_shape
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
        shape = self.keras_shape
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


def gemma3_gguf_tensor_specs(backbone, weights=None):
    """Lists the `GGUFTensorSpec` of every weight of a `Gemma3Backbone`.

    A kernel or the token embedding kept in its GGUF type
    (`gemma3_from_gguf(keep_quantized=True)`) is matched by its `blocks`
    variable instead of `kernel` / `embeddings`.

    Args:
        backbone: A text-only `keras_hub.models.Gemma3Backbone` with query/key
            norms and post-attention / post-feed-forward norms (the Gemma 3
            layout llama.cpp expects).
        weights: The variables to map, default `backbone.weights` (the
            exporter passes them without adapter weights).

    Returns:
        A list of `GGUFTensorSpec`, one per backbone weight, in GGUF order.

    Raises:
        ValueError: If the backbone has weights that llama.cpp's gemma3
            layout cannot hold, or lacks ones it needs.
    """
    from kerasft.targeting import iter_layers

    variables = {variable.path: variable for variable in (weights or backbone.weights)}
    layers = {layer.path: layer for layer in iter_layers(backbone)}

    def spec(name, layer_path, weight, kind):
        variable = variables.pop(f"{layer_path}/{weight}", None)
        blocks = variables.pop(f"{layer_path}/blocks", None)  # a GGUF layer's
        if variable is not None or blocks is None:
            return GGUFTensorSpec(name, variable, kind)
        layer = layers[layer_path]
        shape = getattr(layer, "kernel_shape", None) or (layer.input_dim, layer.output_dim)
        return GGUFTensorSpec(name, blocks, kind, tuple(shape))

    specs = [
        spec("token_embd.weight", "token_embedding", "embeddings", "embedding"),
        spec("output_norm.weight", "final_normalization", "scale", "norm"),
    ]
    for i in range(backbone.num_layers):
        for gguf_name, (layer_path, kind) in _BLOCK_TENSORS.items():
            weight = "scale" if kind == "norm" else "kernel"
            specs.append(
                spec(f"blk.{i}.{gguf_name}.weight", f"decoder_block_{i}/{layer_path}", weight, kind)
            )
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

    rope_base = float(value("rope.freq_base", GLOBAL_ROPE_BASE))
    local_rope_base = float(value("rope.freq_base_swa", LOCAL_ROPE_BASE))
    if (rope_base, local_rope_base) != (GLOBAL_ROPE_BASE, LOCAL_ROPE_BASE):
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

    query_head_dim_normalize = num_layers != LAYERS_WITH_HIDDEN_QUERY_SCALE
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

