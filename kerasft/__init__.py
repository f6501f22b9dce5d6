"""kerasft: fine-tuning recipes for Gemma-style keras-hub models."""

__version__ = "0.1.0"

from kerasft import recipes  # noqa: E402
from kerasft.adapter_switch import adapters_disabled  # noqa: E402
from kerasft.adapters import load_adapter, merge_adapters, save_adapter  # noqa: E402
from kerasft.callbacks import TrainingCheckpoint  # noqa: E402
from kerasft.pretokenized import pretokenized  # noqa: E402
from kerasft.quantization.quantize_model import quantize_model as quantize  # noqa: E402

__all__ = [
    "__version__",
    "recipes",
    "save_adapter",
    "load_adapter",
    "merge_adapters",
    "adapters_disabled",
    "TrainingCheckpoint",
    "pretokenized",
    "quantize",
]
