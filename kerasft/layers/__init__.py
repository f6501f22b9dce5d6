"""kerasft's Keras layers."""

from kerasft.layers.lora import LoRADense

__all__ = ["LoRADense"]
