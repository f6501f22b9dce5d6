"""Bytes of the frozen decoder-block weights of Gemma 3 1B: bf16 vs int8/int4/NF4.

Computed analytically from `kerasft.quantization.quantized_kernel_bytes` (the
formula `QuantizedEinsumDense.quantized_bytes()` is tested against), without
allocating the model. RMS-norm scales stay in bf16 in every row.

Run: `python bench/quantization_memory.py`
"""

from kerasft.quantization import quantized_kernel_bytes

NUM_LAYERS = 26
HIDDEN = 1152
QUERY_HEADS = 4
KV_HEADS = 1
HEAD_DIM = 256
FFN = 6912

# (name, contracted size K, other size N) of each kernel in one decoder block.
KERNELS = [
    ("query", HIDDEN, QUERY_HEADS * HEAD_DIM),
    ("key", HIDDEN, KV_HEADS * HEAD_DIM),
    ("value", HIDDEN, KV_HEADS * HEAD_DIM),
    ("attention_output", QUERY_HEADS * HEAD_DIM, HIDDEN),
    ("ffw_gating", HIDDEN, FFN),
    ("ffw_gating_2", HIDDEN, FFN),
    ("ffw_linear", FFN, HIDDEN),
]
# Four block norms of size HIDDEN plus query/key norms of size HEAD_DIM, in bf16.
NORM_BYTES = (4 * HIDDEN + 2 * HEAD_DIM) * 2

SCHEMES = [
    ("int8 per-channel", dict(mode="int8", group_size=None)),
    ("int8 g64", dict(mode="int8", group_size=64)),
    ("int4 g64 sym", dict(mode="int4", group_size=64)),
    ("int4 g64 asym", dict(mode="int4", group_size=64, asymmetric=True)),
    ("int4 g128 sym", dict(mode="int4", group_size=128)),
    ("nf4 g64", dict(mode="nf4", group_size=64)),
    ("nf4 g64 +double quant", dict(mode="nf4", group_size=64, double_quantize=True)),
    ("nf4 g64 fp16 scales", dict(mode="nf4", group_size=64, scale_dtype="float16")),
]
# QLoRA(residual_rank=8): a frozen float32 rank-8 correction per kernel.
RESIDUAL_RANK = 8


def block_bytes(scheme=None, residual_rank=0):
    """Bytes of one decoder block: kernels (bf16 or quantized) plus bf16 norms."""
    if scheme is None:
        kernels = sum(2 * k * n for _, k, n in KERNELS)
    else:
        kernels = sum(quantized_kernel_bytes(k, n, **scheme) for _, k, n in KERNELS)
    residual = sum(4 * residual_rank * (k + n) for _, k, n in KERNELS)
    return kernels + residual + NORM_BYTES


def main():
    params = sum(k * n for _, k, n in KERNELS) * NUM_LAYERS
    reference = block_bytes() * NUM_LAYERS
    print(
        f"Gemma 3 1B decoder blocks: {NUM_LAYERS} x (hidden {HIDDEN}, {QUERY_HEADS} query / "
        f"{KV_HEADS} kv heads x {HEAD_DIM}, ffn {FFN}): {params / 1e6:.1f}M kernel weights"
    )
    print(f"{'scheme':<24}{'MiB':>10}{'bits/weight':>13}{'vs bf16':>9}")
    print(f"{'bf16':<24}{reference / 2**20:>10.1f}{16.0:>13.3f}{1.0:>8.2f}x")
    rows = [(name, scheme, 0) for name, scheme in SCHEMES]
    rows.append((f"nf4 g64 +dq +r{RESIDUAL_RANK} resid", SCHEMES[-2][1], RESIDUAL_RANK))
    for name, scheme, residual_rank in rows:
        total = block_bytes(scheme, residual_rank) * NUM_LAYERS
        kernel_bits = 8 * (total - NORM_BYTES * NUM_LAYERS) / params
        print(f"{name:<24}{total / 2**20:>10.1f}{kernel_bits:>13.3f}{reference / total:>8.2f}x")


if __name__ == "__main__":
    main()
