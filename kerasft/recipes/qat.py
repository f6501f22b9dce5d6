"""QAT: quantization-aware training of dense kernels, then conversion to integer layers."""

import keras

from kerasft.layers.fake_quant import FakeQuantDense
from kerasft.quantization.quantizers import validate_scheme
from kerasft.recipes.base import register_recipe
from kerasft.recipes.wrapper_recipe import WrapperRecipe
from kerasft.targeting import adapter_wrappers, kernel_variable, normalize_targets


def fake_quant_layers(model):
    """Every `FakeQuantDense` in `model`, in model order."""
    return adapter_wrappers(model, FakeQuantDense)


@register_recipe("qat")
class QAT(WrapperRecipe):
    """Quantization-aware training: train the targeted kernels through their quantized values.

    `apply` wraps each targeted float dense layer in a `FakeQuantDense`
    (quantize-dequantize in the forward pass, straight-through gradient);
    only those kernels train. After `fit`, `merge` (or its alias `convert`)
    swaps every wrapper for a `QuantizedEinsumDense` whose outputs equal the
    fake-quantized model's.

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

    def make_wrapper(self, path, layer):
        return FakeQuantDense(
            layer,
            mode=self.mode,
            group_size=self.group_size,
            asymmetric=self.asymmetric,
            target_path=path,
        )

    def check_targets(self, targets):
        # Bad group sizes fail before the model changes.
        for path, layer in targets.items():
            self._check_group_size(path, layer)

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

    def convert(self, model: keras.Model) -> list[str]:
        """`merge(model)["merged"]`: the converted layer paths (the README's name).

        Rounding the trained float kernel with the same scheme gives the very
        codes the forward pass used, so the converted model's outputs equal
        the fake-quantized model's (up to float rounding of the scales).
        """
        return self.merge(model)["merged"]

    def get_config(self):
        return {
            "method": self.method,
            "mode": self.mode,
            "group_size": self.group_size,
            "asymmetric": self.asymmetric,
            "targets": list(self.targets),
        }
