"""QAT: quantization-aware training of dense kernels, then conversion to integer layers."""

import keras

from kerasft.layers.fake_quant import FakeQuantDense
from kerasft.quantization.quantized_dense import QuantizedEinsumDense
from kerasft.quantization.quantizers import validate_scheme
from kerasft.recipes.base import Recipe, freeze_all, mark_applied, register_recipe
from kerasft.targeting import (
    adapter_wrappers,
    find_target_layers,
    kernel_variable,
    normalize_targets,
    refresh_after_surgery,
    replace_layer,
    wrap_layers,
)


def fake_quant_layers(model):
    """Every `FakeQuantDense` in `model`, in model order."""
    return adapter_wrappers(model, FakeQuantDense)


@register_recipe("qat")
class QAT(Recipe):
    """Quantization-aware training: train the targeted kernels through their quantized values.

    `apply` wraps each targeted float dense layer in a `FakeQuantDense`
    (quantize-dequantize in the forward pass, straight-through gradient);
    only those kernels train. After `fit`, `convert` swaps every wrapper for a
    `QuantizedEinsumDense` whose outputs equal the fake-quantized model's.

    Args:
        mode: `"int8"`, `"int4"` or `"nf4"`.
        group_size: rows of the contracted axis per scale: `"auto"`, None (per
            output channel) or an int dividing every targeted layer's
            contracted size.
        asymmetric: integer modes: zero points per group.
        targets: layer names, path globs or shortcuts (default every dense
            layer, `"all-linear"`).
    """

    def __init__(self, mode="int4", group_size=64, asymmetric=False, targets=("all-linear",)):
        validate_scheme(mode, asymmetric)
        self.mode = mode
        self.group_size = group_size
        self.asymmetric = bool(asymmetric)
        self.targets = normalize_targets(targets)

    def _wrap(self, path, layer):
        return FakeQuantDense(
            layer,
            mode=self.mode,
            group_size=self.group_size,
            asymmetric=self.asymmetric,
            target_path=path,
        )

    def apply(self, model):
        # Fail on bad targets or group sizes before changing anything.
        for path, layer in find_target_layers(model, self.targets).items():
            self._check_group_size(path, layer)
        freeze_all(model)
        wrap_layers(model, self.targets, self._wrap)
        mark_applied(model, self)
        return model

    def _check_group_size(self, path, layer):
        from kerasft.einsum import layer_equation, parse_equation
        from kerasft.quantization.quantizers import resolve_group_size

        if not isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)) or getattr(
            layer, "quantization_mode", None
        ):
            raise ValueError(
                "QAT trains float `Dense`/`EinsumDense` kernels. Received: layer "
                f"{path!r} of type {type(layer).__name__}"
            )
        size = parse_equation(layer_equation(layer)).contracted_size(
            tuple(kernel_variable(layer).shape)
        )
        try:
            resolve_group_size(self.mode, self.group_size, size)
        except ValueError as error:
            raise ValueError(f"{error} (layer {path!r})") from None

    def convert(self, model):
        """Replaces every `FakeQuantDense` by a real `QuantizedEinsumDense`, in place.

        Rounding the trained float kernel with the same scheme gives the very
        codes the forward pass used, so the converted model's outputs equal
        the fake-quantized model's (up to float rounding of the scales).

        Returns:
            The list of converted layer paths.
        """
        converted = []
        for wrapper in fake_quant_layers(model):
            quantized = QuantizedEinsumDense.from_float(
                wrapper.layer,
                mode=wrapper.mode,
                group_size=wrapper.group_size,
                asymmetric=wrapper.asymmetric,
            )
            replace_layer(model, wrapper, quantized)
            converted.append(wrapper.target_path)
        if converted:
            refresh_after_surgery(model)
        return converted

    def get_config(self):
        return {
            "method": self.method,
            "mode": self.mode,
            "group_size": self.group_size,
            "asymmetric": self.asymmetric,
            "targets": list(self.targets),
        }
