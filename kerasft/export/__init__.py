"""Ship the fine-tuned model: PEFT adapters, merged Hugging Face folders, GGUF.

- `kerasft.export.peft`: LoRA adapters to and from PEFT's format;
- `kerasft.export.hf`: the merged model as a transformers folder;
- `kerasft.export.cli`: `python -m kerasft.export` / `kerasft export`.
"""

from kerasft.export.cli import main
from kerasft.export.hf import export_hf
from kerasft.export.peft import load_peft_adapter, save_peft_adapter

__all__ = ["export_hf", "save_peft_adapter", "load_peft_adapter", "main"]
