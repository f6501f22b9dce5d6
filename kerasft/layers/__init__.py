"""kerasft's Keras layers."""

from kerasft.layers.lora import LoRADense
from kerasft.layers.prefix import PrefixAttention
from kerasft.layers.soft_prompt import PrefixEncoder, SoftPrompt
from kerasft.layers.dora import DoRADense
from kerasft.layers.ia3 import IA3Dense
from kerasft.layers.bottleneck import BottleneckAdapter
from kerasft.layers.qlora import QLoRADense

__all__ = ["PrefixAttention", "PrefixEncoder", "SoftPrompt", "LoRADense", "DoRADense", "IA3Dense", "BottleneckAdapter",
           "QLoRADense"]
