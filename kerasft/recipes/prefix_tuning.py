"""Prefix tuning: trainable key/value prefixes in every attention layer."""

from kerasft.layers.prefix import attention_layers, prefix_wrappers, wrap_attention_layers
from kerasft.layers.soft_prompt import PrefixEncoder
from kerasft.models import architecture
from kerasft.recipes.base import Recipe, freeze_all, mark_applied, register_recipe
from kerasft.targeting import place_under


def validate_num_virtual_tokens(num_virtual_tokens, minimum=1):
    if (isinstance(num_virtual_tokens, bool) or not isinstance(num_virtual_tokens, int)
            or num_virtual_tokens < minimum):
        raise ValueError(
            f"`num_virtual_tokens` must be an integer >= {minimum}. "
            f"Received: num_virtual_tokens={num_virtual_tokens!r}"
        )


def build_provider(provider):
    """Builds a shared provider at the top of the variable namespace."""
    place_under(provider, "")
    provider.build()
    return provider


def fold_prefixes(model, num_virtual_tokens):
    """Turns provider-fed prefixes into static per-layer weights, in place.

    Afterwards the model is a plain `PrefixTuning(reparameterize=False)`
    model (and is recorded as such for `save_adapter`), and inference needs
    only the `(P, kv_heads, head_dim)` prefix tensors of each layer.

    Returns:
        The paths of the attention layers whose prefixes were folded (none
        the second time).
    """
    from kerasft.targeting import refresh_after_surgery

    wrappers = prefix_wrappers(model)
    folded = [wrapper.fold() for wrapper in wrappers]
    if any(folded):
        freeze_all(model)
        for wrapper in wrappers:
            wrapper.prefix_key.trainable = True
            wrapper.prefix_value.trainable = True
        refresh_after_surgery(model)
    mark_applied(model, PrefixTuning(num_virtual_tokens, reparameterize=False), replacing=wrappers)
    return [w.target_path for w, done in zip(wrappers, folded) if done]


def merge_prefixes(recipe, model, batch, options):
    """The `merge` of prefix and prompt recipes: `fold_prefixes`, reported as `Recipe.merge`."""
    from kerasft.recipes.merging import measured_merge

    recipe.check_merge_options(options)
    return measured_merge(model, batch, lambda: fold_prefixes(model, recipe.num_virtual_tokens))


@register_recipe("prefix_tuning")
class PrefixTuning(Recipe):
    """Prefix tuning (Li & Liang, 2021) for keras-hub Gemma and Gemma 3 models.

    Every attention layer gets `num_virtual_tokens` extra key/value positions
    that every real token attends to (no causal, padding or sliding-window
    mask on them) and that carry no rotary position; everything else is
    frozen. See `kerasft.layers.prefix` for the exact semantics.

    Args:
        num_virtual_tokens: prefix length `P` (0 gives the base model exactly).
        reparameterize: compute all prefixes as `MLP(E)` from a shared
            `(P, hidden_dim)` embedding, as in the paper; `merge(model)` then
            replaces the MLP by its output for inference.
        hidden: width of the MLP's hidden layer.

    Trainable parameters: `num_layers * 2 * P * kv_heads * head_dim` without
    reparameterisation; with it `P * d + d * hidden + hidden +
    hidden * L2KH + L2KH` (`d` the model width, `L2KH = num_layers * 2 *
    kv_heads * head_dim`).
    """

    def __init__(self, num_virtual_tokens=20, reparameterize=True, hidden=512):
        validate_num_virtual_tokens(num_virtual_tokens, minimum=0)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
            raise ValueError(f"`hidden` must be a positive integer. Received: hidden={hidden!r}")
        self.num_virtual_tokens = num_virtual_tokens
        self.reparameterize = bool(reparameterize)
        self.hidden = hidden

    def apply(self, model):
        attention_layers(model)  # fail before changing anything
        freeze_all(model)
        backbone = architecture.backbone(model)
        provider = None
        if self.reparameterize and self.num_virtual_tokens:
            provider = build_provider(PrefixEncoder(
                self.num_virtual_tokens, backbone.num_layers, backbone.num_key_value_heads,
                backbone.head_dim, backbone.hidden_dim, hidden=self.hidden,
            ))
        wrap_attention_layers(model, self.num_virtual_tokens, provider=provider)
        mark_applied(model, self)
        return model

    def merge(self, model, batch=None, **options):
        """Replaces the prefix MLP by its output, exactly (a no-op without one).

        The prefix wrappers stay (they are the method); see `Recipe.merge`
        for `batch` and the report, whose `merged` lists the attention
        layers whose prefixes were folded.
        """
        return merge_prefixes(self, model, batch, options)

    def get_config(self):
        return {
            "method": self.method,
            "num_virtual_tokens": self.num_virtual_tokens,
            "reparameterize": self.reparameterize,
            "hidden": self.hidden,
        }
