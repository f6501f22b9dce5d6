"""The base of layers that wrap one frozen layer of a model (LoRA, DoRA, IA3, ...)."""

from typing import Any

import keras

from kerasft.targeting import parent_path


class AdapterWrapper(keras.layers.Layer):
    """A layer that wraps one existing layer and adds trainable weights to it.

    A wrapper is the unit of a method: it says what an adapter file holds
    for it (`adapter_weights`) and builds the layer that replaces it after
    training (`merged_layer`), so that `kerasft.adapters` and
    `Recipe.merge` handle any method without knowing it.

    Subclasses create their weights in `build()` (called with no arguments
    right after wrapping) and implement `call`. Mergeable methods set
    `mergeable = True` and implement `merge()`, which folds the adapter into
    the wrapped layer's weights in place (the default `merged_layer` then
    returns the wrapped layer), or override `merged_layer` when the merged
    layer is a new one.

    Args:
        layer: the wrapped layer; it is frozen.
        target_path: the wrapped layer's path in its model (default
            `layer.path`); adapter files key weights by it.
    """

    mergeable = False

    def __init__(self, layer, target_path=None, **kwargs):
        super().__init__(**kwargs)
        layer.trainable = False
        self.layer = layer
        self.target_path = target_path or layer.path
        self.merged = False
        # The method of the recipe that put this wrapper here (`mark_applied`
        # sets it), for error messages.
        self.applied_by = None
        # `kerasft.adapters_disabled` switches this off: the wrapper then
        # runs as its wrapped layer alone (the frozen base).
        self.adapter_enabled = True

    def __call__(self, *args, **kwargs):
        if not self.adapter_enabled:
            return self.layer(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def adapter_weights(self) -> dict[str, keras.Variable]:
        """`{key: variable}` of everything an adapter file must hold for this wrapper.

        The weights this wrapper adds to its layer, trainable or not (a later
        recipe may have frozen them; QLoRA's fitted correction is never
        trained); the wrapped layer's own weights are not included (a wrapper
        that trains them, as QAT's, overrides this). Keys name the layer the
        weight changes: the wrapped layer's path plus the weight's path inside
        the wrapper (`decoder_block_0/attention/key/ia3_vector`); a weight the
        wrapper holds from elsewhere (a shared prefix provider) keeps its path.
        """
        wrapped = {id(variable) for variable in self.layer.weights}
        # `targeting.wrap_layers` builds the wrapper under the wrapped layer's parent.
        scope = "/".join(part for part in (parent_path(self.target_path), self.name) if part)
        weights = {}
        for variable in self.weights:
            if id(variable) in wrapped:
                continue
            key = variable.path
            if key.startswith(scope + "/"):
                key = self.target_path + key[len(scope):]
            weights[key] = variable
        return weights

    def merge(self) -> bool:
        """Folds the adapter into the wrapped layer's weights, in place.

        Returns:
            True if the weights changed, False if already merged.
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot be merged into its layer. Received: "
            f"layer at {self.target_path!r}"
        )

    def merged_layer(self, **options: Any) -> keras.Layer:
        """The layer that replaces this wrapper once merged.

        The default folds the adapter into the wrapped layer (`merge()`, a
        no-op the second time) and returns that layer. Options a wrapper
        does not use are ignored (the recipe's `merge` checks their names).

        Raises:
            ValueError: if the wrapper is not `mergeable`.
        """
        if not self.mergeable:
            raise ValueError(
                f"{type(self).__name__} cannot be merged into its layer. Received: "
                f"layer at {self.target_path!r}"
            )
        self.merge()
        return self.layer

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layer": keras.saving.serialize_keras_object(self.layer),
                "target_path": self.target_path,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)
