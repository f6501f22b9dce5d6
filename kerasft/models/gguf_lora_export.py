"""Write a model's LoRA adapters as a llama.cpp GGUF LoRA adapter (`llama-cli --lora`).

The format is the one llama.cpp's `convert_lora_to_gguf.py` writes and
`llama_adapter_lora_init` reads: metadata `general.architecture` (the base
model's), `general.type = "adapter"`, `adapter.type = "lora"` and one
`adapter.lora.alpha`; for each adapted base tensor `<name>` (e.g.
`blk.0.attn_q.weight`) the pair `<name>.lora_a` of shape `(rank, in)` and
`<name>.lora_b` of shape `(out, rank)` (numpy order, slowest axis first), so
that llama.cpp computes `W x + (alpha / rank) * B (A x)`. The rank is read from
the tensor shapes, so adapters of different ranks share the file.
"""

import os

import numpy as np
from keras import ops

from kerasft.models.gemma3_gguf_export import gguf_tensor_sources
from kerasft.models.gemma3_gguf_format import GEMMA3_ARCHITECTURE

ADAPTER_TENSOR_TYPES = ("F32", "F16")


def _lora_factors(wrapper, alpha):
    """`(lora_a (rank, in), lora_b (out, rank))` in float32, the scale folded into B.

    llama.cpp scales every pair by `alpha / rank`; a wrapper scaling by
    anything else (its own alpha, rank-stabilised LoRA) has the ratio folded
    into `lora_b`, so the product is the wrapper's update exactly.
    """
    a = np.asarray(ops.convert_to_numpy(ops.cast(wrapper.lora_a, "float32")))
    b = np.asarray(ops.convert_to_numpy(ops.cast(wrapper.lora_b, "float32")))
    rank = wrapper.rank
    lora_a = a.reshape(-1, rank).T
    lora_b = b.reshape(rank, -1).T
    factor = wrapper.scale / (alpha / rank)
    if factor != 1.0:
        lora_b = lora_b * np.float32(factor)
    return np.ascontiguousarray(lora_a), np.ascontiguousarray(lora_b)


def _check_wrapper(wrapper):
    reason = None
    if not (hasattr(wrapper, "lora_a") and hasattr(wrapper, "lora_b")):
        reason = "it holds no LoRA factors"
    elif hasattr(wrapper, "magnitude") or hasattr(wrapper, "merged_kernel"):
        reason = "llama.cpp has no DoRA"
    elif getattr(wrapper, "residual_rank", 0):
        reason = "its frozen residual correction has no place in a llama.cpp adapter"
    elif wrapper.merged:
        reason = "it is merged into the base already"
    if reason:
        raise ValueError(
            f"Cannot write the adapter at {wrapper.target_path!r} as a llama.cpp LoRA: "
            f"{reason}. Received: a {type(wrapper).__name__}"
        )


def write_gguf_lora_adapter(causal_lm, path, tensor_type="F32", name=None):
    """Writes the LoRA adapters of a Gemma 3 model as a llama.cpp GGUF LoRA file.

    The file goes with the GGUF the model was loaded from (or one exported
    from its base): `llama-cli -m base.gguf --lora adapter.gguf`.

    Args:
        causal_lm: A `Gemma3CausalLM` in llama.cpp's layout with LoRA
            adapters (`kerasft.recipes.LoRA`, or QLoRA without a residual
            correction) on its kernels, float or GGUF
            (`gemma3_from_gguf(keep_quantized=True)`).
        path: Output `.gguf` path.
        tensor_type: `"F32"` or `"F16"` for the factors.
        name: `general.name`; defaults to the backbone's name plus `-lora`.

    Returns:
        The path written, as a string.

    Raises:
        ValueError: if the model has no LoRA adapter, an adapter llama.cpp
            cannot express (DoRA, a QLoRA residual, a merged one, one on a
            layer that is not a GGUF tensor), or an unknown `tensor_type`.
    """
    import gguf

    if tensor_type not in ADAPTER_TENSOR_TYPES:
        raise ValueError(
            f"`tensor_type` must be one of {ADAPTER_TENSOR_TYPES}. Received: "
            f"tensor_type={tensor_type!r}"
        )
    backbone = causal_lm.backbone
    specs, sources = gguf_tensor_sources(backbone)
    adapted = [(spec, sources[spec.name][1]) for spec in specs if sources[spec.name][1] is not None]
    from kerasft.targeting import adapter_wrappers

    placed = {id(wrapper) for _, wrapper in adapted}
    stray = [w.target_path for w in adapter_wrappers(backbone) if id(w) not in placed]
    if stray:
        raise ValueError(
            f"Adapters on layers that are not llama.cpp tensors cannot be written. "
            f"Received: adapters at {stray}"
        )
    if not adapted:
        raise ValueError("The model has no LoRA adapter to write. Received: no adapter wrappers")
    for _, wrapper in adapted:
        _check_wrapper(wrapper)
    alpha = float(adapted[0][1].alpha)

    path = os.fspath(path)
    writer = gguf.GGUFWriter(path, GEMMA3_ARCHITECTURE)
    writer.add_name(name or f"{backbone.name}-lora")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for spec, wrapper in adapted:
        lora_a, lora_b = _lora_factors(wrapper, alpha)
        expected = spec.gguf_shape
        if (lora_b.shape[0], lora_a.shape[1]) != expected:
            raise ValueError(
                f"The adapter at {wrapper.target_path!r} does not factor {spec.name!r}. "
                f"Received: lora_a {lora_a.shape}, lora_b {lora_b.shape} for a tensor "
                f"of shape {expected}"
            )
        dtype = np.float32 if tensor_type == "F32" else np.float16
        writer.add_tensor(f"{spec.name}.lora_a", lora_a.astype(dtype))
        writer.add_tensor(f"{spec.name}.lora_b", lora_b.astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
