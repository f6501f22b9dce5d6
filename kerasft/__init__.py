"""kerasft: fine-tuning recipes for Gemma-style keras-hub models."""

__version__ = "0.1.0"
