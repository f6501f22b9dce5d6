"""Loading real checkpoints into keras-hub models, and writing them back.

- `gemma3_from_gguf`: a llama.cpp Gemma 3 GGUF file as a `Gemma3CausalLM`
  with its preprocessor and tokenizer.
- `write_gemma3_gguf`: the inverse, a `Gemma3CausalLM` as a GGUF file.
- `write_gguf_lora_adapter`: its LoRA adapters as a llama.cpp GGUF LoRA file.
- `read_gguf`: a fast GGUF metadata/tensor parser (dequantize with
  `gguf.quants.dequantize`).
"""

from kerasft.models.gemma3_gguf import default_dtype
from kerasft.models.gemma3_gguf_format import gemma3_backbone_config_from_gguf
from kerasft.models.gemma3_gguf import gemma3_from_gguf
from kerasft.models.gemma3_gguf_export import write_gemma3_gguf
from kerasft.models.gguf_lora_export import write_gguf_lora_adapter
from kerasft.models.gguf_reader import read_gguf
from kerasft.models.gguf_tokenizer import gguf_vocabulary_from_sentencepiece
from kerasft.models.gguf_tokenizer import sentencepiece_proto_from_gguf

__all__ = [
    "default_dtype",
    "gemma3_backbone_config_from_gguf",
    "gemma3_from_gguf",
    "gguf_vocabulary_from_sentencepiece",
    "read_gguf",
    "sentencepiece_proto_from_gguf",
    "write_gemma3_gguf",
    "write_gguf_lora_adapter",
]
