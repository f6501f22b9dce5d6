"""Weight-only quantization (int8, int4, NF4) for keras-hub Gemma models.

- `QuantizedEinsumDense`: a quantized `Dense`/`EinsumDense`, built with
  `QuantizedEinsumDense.from_float(layer, mode=..., group_size=...)`.
- `QuantizedEmbedding`: an int8 `ReversibleEmbedding` (lookups and tied logits).
- `GGUFEinsumDense` / `GGUFEmbedding`: a GGUF tensor kept in its own block
  type, dequantized on the fly (`gemma3_from_gguf(keep_quantized=True)`).
- `quantize_model(model, mode, ...)`: post-training quantization of a causal
  LM's decoder blocks in place, by round-to-nearest or, with calibration
  batches, clipping search and/or GPTQ.
"""

from kerasft.quantization.codebooks import NF4_CODE_VALUES, nf4_codebook
from kerasft.quantization.gguf_dense import GGUFEinsumDense
from kerasft.quantization.gguf_embedding import GGUFEmbedding
from kerasft.quantization.quantize_model import METHODS, quantize_model
from kerasft.quantization.quantized_dense import QuantizedEinsumDense
from kerasft.quantization.quantized_embedding import QuantizedEmbedding
from kerasft.quantization.quantizers import MODES, quantized_kernel_bytes
from kerasft.quantization.sensitivity import quantization_sensitivity, sensitivity_table

__all__ = [
    "GGUFEinsumDense",
    "GGUFEmbedding",
    "METHODS",
    "MODES",
    "NF4_CODE_VALUES",
    "QuantizedEinsumDense",
    "QuantizedEmbedding",
    "nf4_codebook",
    "quantization_sensitivity",
    "quantize_model",
    "quantized_kernel_bytes",
    "sensitivity_table",
]
