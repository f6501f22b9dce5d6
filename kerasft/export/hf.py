"""The fine-tuned model as a Hugging Face transformers folder (merged), through keras-hub.

keras-hub 0.32's `CausalLM.export_to_transformers` writes `config.json` +
`model.safetensors` (and the tokenizer, with a preprocessor) for Gemma and
Gemma 3 text models that transformers and vLLM load. It reads each layer's
own kernel, so it cannot see an adapter wrapper (a LoRA wrapper's first
weight is `lora_a`) nor a quantized kernel. `export_hf` therefore exports a
merged copy: a fresh backbone from the model's config takes the model's
weights by path, the live adapters are re-applied to it from memory
(`kerasft.adapters.adapter_state`) and merged (every wrapper's
`merged_layer`), and that copy is exported. The model itself is not changed.
"""

import os
import pathlib

import keras

from kerasft.adapters import adapter_state, apply_adapter_state, merge_adapters, quantized_layers
from kerasft.models.architecture import backbone as backbone_of
from kerasft.models.architecture import has_backbone
from kerasft.recipes.base import split_merged_recipes

# keras-hub's exporter writes these Gemma 3 norms unconditionally and
# transformers' Gemma3 always applies them; a backbone without them cannot
# be expressed (keras-hub `Gemma3Backbone` arguments).
_GEMMA3_REQUIRED = ("use_post_attention_norm", "use_post_ffw_norm")


def _check_exportable(model, directory):
    source = backbone_of(model)
    if type(source).__name__ == "Gemma3Backbone":
        config = source.get_config()
        missing = [key for key in _GEMMA3_REQUIRED if not config.get(key, False)]
        if missing or config.get("vision_encoder") is not None:
            raise ValueError(
                "transformers' Gemma3ForCausalLM has post-attention and post-feed-forward "
                "norms and no vision tower; this Gemma3Backbone has "
                f"{', '.join(f'{k}=False' for k in missing) or 'a vision encoder'}. "
                f"Received: directory={str(directory)!r}"
            )
    quantized = quantized_layers(model)
    if quantized:
        raise ValueError(
            "keras-hub's exporter writes float kernels; this model has quantized layers "
            f"{dict(list(quantized.items())[:3])}{' ...' if len(quantized) > 3 else ''}. "
            "Merge a QLoRA adapter into float layers first (`recipe.merge(model)` or "
            "`kerasft.merge_adapters(model)`, without `requantize`), or export the float base. "
            f"Received: directory={str(directory)!r}"
        )


def merged_copy(model: keras.Model) -> keras.Model:
    """A new model with `model`'s weights and its live adapters merged in.

    Raises:
        ValueError: if an adapter cannot be merged into plain layers (its
            extra weights would be lost), naming them, or if a base weight
            of the copy is not found in `model`.
    """
    source = backbone_of(model)
    fresh = type(source).from_config(source.get_config())
    by_path = {variable.path: variable for variable in model.variables}
    missing = [v.path for v in fresh.variables if v.path not in by_path]
    if missing:
        raise ValueError(
            "Some weights of the base model were not found in `model` by path. Received: "
            f"missing {missing[:5]}"
        )
    for variable in fresh.variables:
        variable.assign(by_path[variable.path])
    copy = fresh
    if has_backbone(model):
        copy = type(model)(backbone=fresh, preprocessor=getattr(model, "preprocessor", None))
    if split_merged_recipes(model)[1]:
        config, tensors = adapter_state(model)
        copy = apply_adapter_state(copy, config, tensors, "<the model being exported>")
        merge_adapters(copy)
    base_paths = {variable.path for variable in fresh.variables}
    extra = sorted(v.path for v in copy.variables if v.path not in base_paths)
    if extra:
        raise ValueError(
            "Some adapters do not merge into the model's own layers (prompt / prefix "
            "tuning, bottleneck adapters keep weights of their own), so a transformers "
            f"export would drop them. Received: weights {extra[:5]}"
        )
    return copy


def export_hf(model: keras.Model, directory: str | os.PathLike) -> pathlib.Path:
    """Writes the model, adapters merged, as a Hugging Face transformers folder.

    Args:
        model: a keras-hub `GemmaCausalLM` / `Gemma3CausalLM` (text only),
            with or without live kerasft adapters; it is not changed. Its
            preprocessor, if any, is exported as the tokenizer.
        directory: created if missing.

    Returns:
        The directory; `transformers.AutoModelForCausalLM.from_pretrained`
        (and vLLM) load it, giving the model's logits.

    Raises:
        ValueError: for quantized layers (merge or dequantize first: the
            message says how), an adapter that does not merge into plain
            layers, or an architecture transformers cannot express.
    """
    _check_exportable(model, directory)
    copy = merged_copy(model)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    copy.export_to_transformers(str(directory))
    return directory
