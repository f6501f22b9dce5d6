"""Write a keras-hub `Gemma3CausalLM` as a llama.cpp GGUF file.

The inverse of `kerasft.models.gemma3_from_gguf`: the same tensor names,
layouts and metadata keys llama.cpp's `convert_hf_to_gguf.py` writes for
Gemma 3, so the file also loads in llama.cpp.
"""

import os

import numpy as np

from kerasft.models.gemma3_gguf_format import GEMMA3_ARCHITECTURE
from kerasft.models.gemma3_gguf_format import GLOBAL_ROPE_BASE
from kerasft.models.gemma3_gguf_format import LAYERS_WITH_HIDDEN_QUERY_SCALE
from kerasft.models.gemma3_gguf_format import gemma3_gguf_tensor_specs

# Types `gguf.quants.quantize` implements in numpy (K-quants are read-only).
EXPORT_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1")
# `"source"`: each GGUF layer's own type (`gemma3_from_gguf(keep_quantized=True)`).
SOURCE = "source"


def _check_exportable(backbone):
    reasons = []
    if backbone.vision_encoder is not None:
        reasons.append("vision_encoder is not None")
    if getattr(backbone, "is_embedding_model", False):
        reasons.append("is_embedding_model=True")
    if getattr(backbone, "use_bidirectional_attention", False):
        reasons.append("use_bidirectional_attention=True")
    if backbone.attention_logit_soft_cap is not None:
        reasons.append(f"attention_logit_soft_cap={backbone.attention_logit_soft_cap}")
    if backbone.local_rope_scaling_factor != 1.0:
        reasons.append(f"local_rope_scaling_factor={backbone.local_rope_scaling_factor}")
    # llama.cpp picks the query scale from the model size: 1/sqrt(hidden/heads)
    # for the 62-layer 27B, 1/sqrt(head_dim) otherwise.
    uses_head_dim = backbone.num_layers != LAYERS_WITH_HIDDEN_QUERY_SCALE
    same_scale = backbone.hidden_dim // backbone.num_query_heads == backbone.head_dim
    if backbone.query_head_dim_normalize != uses_head_dim and not same_scale:
        reasons.append(f"query_head_dim_normalize={backbone.query_head_dim_normalize}")
    if reasons:
        raise ValueError(
            "llama.cpp's gemma3 format cannot express this backbone. Received: "
            f"causal_lm with {', '.join(reasons)}."
        )


def _float_kernel(spec, layer, wrapper):
    """The float32 keras-layout value of `spec`, with `wrapper`'s adapter merged in.

    Each wrapper says how it merges: `merged_kernel()` (DoRA), or the LoRA
    family's `delta_kernel()` (+ QLoRA's frozen `residual_kernel()`); the
    model is not changed.
    """
    from keras import ops

    from kerasft.layers.lora import float_kernel

    if spec.layer_shape is None:  # a float variable
        kernel = ops.cast(spec.variable, "float32")
    elif spec.kind == "embedding":
        kernel = layer.dequantized_embeddings("float32")
    else:
        kernel = float_kernel(layer)
    if wrapper is not None and not wrapper.merged:
        if hasattr(wrapper, "merged_kernel"):
            kernel = wrapper.merged_kernel()
        elif hasattr(wrapper, "delta_kernel"):
            kernel = kernel + wrapper.delta_kernel()
            residual = getattr(wrapper, "residual_kernel", lambda: None)()
            if residual is not None:
                kernel = kernel + residual
        else:
            raise ValueError(
                "Only LoRA-family and DoRA adapters merge into an exported GGUF without "
                f"changing the model; merge the others first (`recipe.merge(model)`). "
                f"Received: a {type(wrapper).__name__} at {wrapper.target_path!r}"
            )
    return np.asarray(ops.convert_to_numpy(ops.cast(kernel, "float32")))


def _gguf_tensor(spec, tensor_type, layer, wrapper, k_quant_type):
    """`(array, raw_dtype, type written)` for one tensor of the file."""
    import gguf

    from kerasft.quantization.gguf_dense import quantize_gguf_rows

    source_type = getattr(layer, "tensor_type", None) if spec.layer_shape else None
    if source_type is not None and wrapper is None and tensor_type in (SOURCE, source_type):
        # Unchanged: the file's own bytes, no second rounding.
        array = layer.gguf_data()
        raw = None if source_type in ("F32", "F16") else gguf.GGMLQuantizationType[source_type]
        return array, raw, source_type
    if tensor_type == SOURCE:
        if source_type is None:
            tensor_type = "F32"
        elif source_type in EXPORT_TENSOR_TYPES:
            tensor_type = source_type
        else:
            tensor_type = k_quant_type
    array = np.ascontiguousarray(spec.from_keras(_float_kernel(spec, layer, wrapper)), dtype=np.float32)
    raw = None if tensor_type in ("F32", "F16") else gguf.GGMLQuantizationType[tensor_type]
    return quantize_gguf_rows(array, tensor_type), raw, tensor_type


def _check_tensor_type(spec, tensor_type, argument="tensor_types"):
    import gguf

    if tensor_type == SOURCE:
        return
    if tensor_type not in EXPORT_TENSOR_TYPES:
        raise ValueError(
            f"Unsupported GGUF tensor type for {spec.name!r} in `{argument}`. Received: "
            f"{tensor_type!r}; supported: {SOURCE!r}, {', '.join(EXPORT_TENSOR_TYPES)}."
        )
    block_size, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[tensor_type]]
    if spec.gguf_shape[-1] % block_size:
        raise ValueError(
            f"{tensor_type} needs rows that are a multiple of {block_size} values. "
            f"Received: {tensor_type!r} for {spec.name!r} of shape {spec.gguf_shape}."
        )


def gguf_tensor_sources(backbone):
    """Pairs each GGUF tensor of a (possibly adapted) backbone with what holds it.

    Returns:
        `(specs, sources)`: the `GGUFTensorSpec` list (adapter weights left
        out) and `{gguf tensor name: (layer, adapter wrapper or None)}`.
    """
    from kerasft.targeting import adapter_wrappers

    adapter_ids = {
        id(variable) for wrapper in adapter_wrappers(backbone)
        for variable in wrapper.adapter_weights().values()
    }  # fmt: skip
    specs = gemma3_gguf_tensor_specs(
        backbone, [variable for variable in backbone.weights if id(variable) not in adapter_ids]
    )
    return specs, _layers_and_wrappers(backbone, specs)


def _layers_and_wrappers(backbone, specs):
    from kerasft.layers.wrapper import AdapterWrapper
    from kerasft.targeting import iter_layers

    layers = {layer.path: layer for layer in iter_layers(backbone)}
    wrappers = {
        wrapper.layer.path: wrapper
        for wrapper in iter_layers(backbone)
        if isinstance(wrapper, AdapterWrapper)
    }
    found = {}
    for spec in specs:
        path = spec.variable.path.rpartition("/")[0]
        found[spec.name] = (layers[path], wrappers.get(path))
    return found


def write_gemma3_gguf(
    causal_lm,
    path,
    tensor_types=None,
    default_tensor_type="F32",
    context_length=32768,
    name=None,
    chat_template=None,
    k_quant_type="Q8_0",
):
    """Writes a `Gemma3CausalLM` and its tokenizer to a llama.cpp GGUF file.

    The model may hold GGUF layers (`gemma3_from_gguf(keep_quantized=True)`)
    and LoRA-family or DoRA adapters: each adapter is merged into the written
    tensor in float32 (base + update, then one rounding to the tensor's type);
    the model itself is not changed.

    Args:
        causal_lm: A text-only `keras_hub.models.Gemma3CausalLM` in llama.cpp's
            Gemma 3 layout (query/key norms, post norms) with a preprocessor
            whose tokenizer is a BPE SentencePiece model.
        path: Output `.gguf` path.
        tensor_types: Optional `{gguf_tensor_name: type}` overrides, e.g.
            `{"blk.0.ffn_down.weight": "Q8_0"}`. Types: one of
            `EXPORT_TENSOR_TYPES`, or `"source"`.
        default_tensor_type: Type of every matrix not in `tensor_types`;
            norm weights not in `tensor_types` stay F32, as llama.cpp writes
            them. `"source"` keeps each GGUF layer's own type: a tensor no
            adapter changed is copied byte for byte, a changed one is rounded
            once into its type, or into `k_quant_type` for a K-quant (the
            `gguf` package cannot write K-quants); float layers are F32.
        context_length: `gemma3.context_length` written to the metadata
            (32768 for Gemma 3 270M and 1B, 131072 for the larger models).
        name: `general.name`; defaults to the backbone's name.
        chat_template: Jinja chat template written as
            `tokenizer.chat_template` (e.g. the source file's, from
            `read_gguf(path).metadata`), or None for none.
        k_quant_type: Type of a changed K-quant tensor under `"source"`.

    Returns:
        The path written, as a string.

    Raises:
        ValueError: If the model cannot be written in llama.cpp's gemma3
            format, or a tensor type or tensor name is unknown.
    """
    import gguf

    from kerasft.models.gguf_tokenizer import gguf_vocabulary_from_sentencepiece

    backbone = causal_lm.backbone
    _check_exportable(backbone)
    tokenizer = getattr(causal_lm.preprocessor, "tokenizer", None)
    if getattr(tokenizer, "proto", None) is None:
        raise ValueError(
            "Writing a GGUF file needs the model's SentencePiece tokenizer. "
            f"Received: causal_lm.preprocessor={causal_lm.preprocessor!r}."
        )
    specs, sources = gguf_tensor_sources(backbone)
    tensor_types = dict(tensor_types or {})
    unknown_names = sorted(set(tensor_types) - {spec.name for spec in specs})
    if unknown_names:
        raise ValueError(
            f"`tensor_types` names tensors the model does not have. Received: "
            f"{unknown_names}."
        )
    # Like llama.cpp's converter, keep 1-D norm weights in F32 unless told
    # otherwise: they hold 1 + w, which 16-bit types would round.
    spec_types = [
        (spec, tensor_types.get(spec.name, "F32" if spec.kind == "norm" else default_tensor_type))
        for spec in specs
    ]
    for spec, tensor_type in spec_types:
        _check_tensor_type(spec, tensor_type)
    if k_quant_type not in EXPORT_TENSOR_TYPES:
        raise ValueError(
            f"`k_quant_type` must be one of {', '.join(EXPORT_TENSOR_TYPES)}. Received: "
            f"k_quant_type={k_quant_type!r}."
        )
    vocabulary = gguf_vocabulary_from_sentencepiece(tokenizer.proto)
    if len(vocabulary["tokens"]) > backbone.vocabulary_size:
        raise ValueError(
            "The tokenizer has more pieces than the embedding has rows. Received: "
            f"{len(vocabulary['tokens'])} pieces, vocabulary_size="
            f"{backbone.vocabulary_size}."
        )

    path = os.fspath(path)
    writer = gguf.GGUFWriter(path, GEMMA3_ARCHITECTURE)
    writer.add_name(name or backbone.name)
    writer.add_context_length(context_length)
    writer.add_embedding_length(backbone.hidden_dim)
    writer.add_block_count(backbone.num_layers)
    writer.add_feed_forward_length(backbone.intermediate_dim)
    writer.add_head_count(backbone.num_query_heads)
    writer.add_head_count_kv(backbone.num_key_value_heads)
    writer.add_key_length(backbone.head_dim)
    writer.add_value_length(backbone.head_dim)
    writer.add_layer_norm_rms_eps(backbone.layer_norm_epsilon)
    writer.add_rope_freq_base(GLOBAL_ROPE_BASE)
    if backbone.global_rope_scaling_factor != 1.0:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(backbone.global_rope_scaling_factor)
    if backbone.use_sliding_window_attention:
        writer.add_sliding_window(backbone.sliding_window_size)
    if backbone.final_logit_soft_cap is not None:
        writer.add_final_logit_softcapping(backbone.final_logit_soft_cap)

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocabulary["tokens"])
    writer.add_token_scores(vocabulary["scores"])
    writer.add_token_types(vocabulary["token_types"])
    for key, add in (
        ("bos_id", writer.add_bos_token_id),
        ("eos_id", writer.add_eos_token_id),
        ("unknown_id", writer.add_unk_token_id),
        ("padding_id", writer.add_pad_token_id),
    ):
        if vocabulary[key] is not None:
            add(vocabulary[key])
    writer.add_add_bos_token(bool(getattr(causal_lm.preprocessor, "add_start_token", True)))
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(vocabulary["add_space_prefix"])
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    for spec, tensor_type in spec_types:
        layer, wrapper = sources[spec.name]
        array, raw_dtype, _ = _gguf_tensor(spec, tensor_type, layer, wrapper, k_quant_type)
        writer.add_tensor(spec.name, array, raw_dtype=raw_dtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
