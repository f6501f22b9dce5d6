"""kerasft: fine-tuning recipes for Gemma-style keras-hub models."""

__version__ = "0.1.0"

# First, before keras-hub imports TensorFlow: its start-up lines off the console.
from kerasft.quiet import quiet_startup as _quiet_startup  # noqa: E402

_quiet_startup()

from kerasft import recipes  # noqa: E402
from kerasft import distribution  # noqa: E402
from kerasft.adapter_switch import adapters_disabled  # noqa: E402
from kerasft.adapter_switch import add_adapter, combine_adapters, set_adapter  # noqa: E402
from kerasft.adapters import load_adapter, merge_adapters, save_adapter  # noqa: E402
from kerasft.callbacks import TrainingCheckpoint  # noqa: E402
from kerasft.history import TrainingHistory  # noqa: E402
from kerasft.pretokenized import pretokenized  # noqa: E402
from kerasft.quantization.quantize_model import quantize_model as quantize  # noqa: E402

__all__ = [
    "__version__",
    "recipes",
    "distribution",
    "save_adapter",
    "load_adapter",
    "merge_adapters",
    "adapters_disabled",
    "add_adapter",
    "set_adapter",
    "combine_adapters",
    "TrainingCheckpoint",
    "TrainingHistory",
    "pretokenized",
    "quantize",
]
