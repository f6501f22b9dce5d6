"""LoRA adapters in Hugging Face PEFT's format, both ways.

A PEFT adapter folder holds `adapter_config.json` (`peft_type: "LORA"`, `r`,
`lora_alpha`, `target_modules`, `use_rslora`, `use_dora`, `rank_pattern`,
...) and `adapter_model.safetensors` with one tensor per factor, keyed by the
transformers module it changes:
`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` is
`(r, in_features)`, `...lora_B.weight` is `(out_features, r)` and, for DoRA,
`...lora_magnitude_vector` is `(out_features,)`. PEFT adds
`scale * B @ A` (`scale = lora_alpha / r`, or `/ sqrt(r)` with rsLoRA) to
the `(out, in)` weight, as kerasft's `LoRADense` adds `scale * A @ B` to its
kernel, so the factors are kerasft's transposed and flattened (see
`kerasft.export.hf_names`). `peft.PeftModel.from_pretrained` loads what
`save_peft_adapter` writes onto the model `kerasft.export.hf` exported, and
`load_peft_adapter` puts a PEFT-trained adapter on a kerasft base.
"""

import json
import os
import pathlib

import keras
import numpy as np

from kerasft.export.hf_names import hf_module_name, keras_layer_path
from kerasft.layers.dora import DoRADense
from kerasft.layers.lora import LoRADense
from kerasft.models.architecture import decoder_blocks
from kerasft.recipes.base import (
    applied_recipes,
    restore_applied_recipes,
    split_merged_recipes,
)
from kerasft.tensor_files import atomic_write, load_tensors, save_tensors
from kerasft.targeting import adapter_wrappers, undo_surgery_on_error

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
# `PeftModel` -> `LoraModel` -> the transformers model: PEFT's state-dict keys.
_PEFT_PREFIX = "base_model.model."
# Settings of a PEFT LoRA config that kerasft's LoRA cannot express.
_UNSUPPORTED = {
    "fan_in_fan_out": (False, None),
    "bias": ("none", None),
    "modules_to_save": (None, []),
    "layers_to_transform": (None, []),
    "alpha_pattern": (None, {}),
    "use_qalora": (False, None),
    "lora_bias": (False, None),
    "trainable_token_indices": (None,),
    "target_parameters": (None, []),
}


def _live_lora_wrappers(model, directory):
    merged, live = split_merged_recipes(model)
    methods = [entry.config.get("method") for entry in live]
    if merged or methods != ["lora"]:
        raise ValueError(
            "A PEFT adapter holds one LoRA (rsLoRA, DoRA) adapter on an unchanged base. "
            f"Received: model with recipes {methods or 'none'} applied and "
            f"{[e.config.get('method') for e in merged] or 'none'} merged into the base "
            f"(directory={str(directory)!r})"
        )
    wrappers = adapter_wrappers(model)
    others = [w.target_path for w in wrappers if type(w) not in (LoRADense, DoRADense)]
    quantized = [w.target_path for w in wrappers if hasattr(w.layer, "dequantized_kernel")]
    if others or quantized:
        raise ValueError(
            "PEFT's LoRA format holds LoRA / DoRA factors over float layers; this model has "
            f"other adapters at {others} and quantized layers under adapters at {quantized}. "
            "Export the merged model instead (`kerasft.export.hf.export_merged`)."
        )
    return live[0], wrappers


def save_peft_adapter(
    model: keras.Model,
    directory: str | os.PathLike,
    base_model_name_or_path: str | None = None,
) -> pathlib.Path:
    """Writes the model's LoRA adapter as a PEFT adapter folder.

    Args:
        model: a Gemma / Gemma 3 keras-hub model with one `LoRA` recipe
            applied (rsLoRA and DoRA included), over float layers.
        directory: created if missing.
        base_model_name_or_path: recorded in the config (PEFT's field; e.g.
            the folder `kerasft.export.hf.export_hf` wrote the base to).

    Returns:
        The directory.

    Raises:
        ValueError: for anything PEFT's LoRA format cannot hold (another
            method, a quantized base, an adapter on a layer transformers has
            no module for).
    """
    entry, wrappers = _live_lora_wrappers(model, directory)
    recipe = entry.config
    tensors = {}
    ranks = {}
    for wrapper in wrappers:
        module = hf_module_name(wrapper.target_path)
        a = np.asarray(keras.ops.convert_to_numpy(wrapper.lora_a), dtype="float32")
        b = np.asarray(keras.ops.convert_to_numpy(wrapper.lora_b), dtype="float32")
        key = _PEFT_PREFIX + module
        tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, wrapper.rank).T)
        tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(b.reshape(wrapper.rank, -1).T)
        if isinstance(wrapper, DoRADense):
            magnitude = keras.ops.convert_to_numpy(wrapper.magnitude)
            tensors[f"{key}.lora_magnitude_vector"] = np.asarray(magnitude, "float32").reshape(-1)
        ranks[module] = wrapper.rank
    rank = int(recipe["rank"])
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": recipe["alpha"],
        "lora_dropout": recipe["dropout"],
        "target_modules": _target_modules(model, list(ranks)),
        "rank_pattern": {module: r for module, r in ranks.items() if r != rank},
        "alpha_pattern": {},
        "use_rslora": bool(recipe["use_rslora"]),
        "use_dora": bool(recipe["use_dora"]),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, directory / PEFT_WEIGHTS_FILE, metadata={"format": "pt"})
    text = json.dumps(config, indent=2, sort_keys=True)
    atomic_write(directory / PEFT_CONFIG_FILE, lambda tmp: pathlib.Path(tmp).write_text(text))
    return directory


def _target_modules(model, modules):
    """Short names (`q_proj`) when every block has them, else the full module names.

    PEFT matches a target by suffix, so `q_proj` would also adapt blocks the
    kerasft adapter left alone.
    """
    short = sorted({module.rsplit(".", 1)[-1] for module in modules})
    count = len(decoder_blocks(model))
    covered = {module.rsplit(".", 1)[-1] for module in modules}
    if len(modules) == count * len(covered):
        return short
    return sorted(modules)


def read_peft_config(directory: str | os.PathLike) -> dict:
    """Reads and checks a PEFT LoRA `adapter_config.json`.

    Raises:
        FileNotFoundError: if the folder has no PEFT adapter.
        ValueError: for another PEFT method or a LoRA setting kerasft cannot
            express (naming the file and the setting).
    """
    path = pathlib.Path(directory) / PEFT_CONFIG_FILE
    if not path.is_file() or not (pathlib.Path(directory) / PEFT_WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"A PEFT adapter folder holds {PEFT_CONFIG_FILE} and {PEFT_WEIGHTS_FILE}. "
            f"Received: directory={str(directory)!r} with {sorted(p.name for p in pathlib.Path(directory).glob('*'))}"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot parse {path} as JSON. Received: {error}") from error
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ValueError(
            f"{path}: only PEFT LoRA adapters can be imported. Received: "
            f"peft_type={config.get('peft_type') if isinstance(config, dict) else None!r}"
        )
    for key, allowed in _UNSUPPORTED.items():
        if key in config and config[key] not in allowed:
            raise ValueError(
                f"{path}: kerasft's LoRA cannot express this PEFT setting. "
                f"Received: {key}={config[key]!r}"
            )
    return config


def load_peft_adapter(model: keras.Model, directory: str | os.PathLike) -> keras.Model:
    """Applies a PEFT LoRA adapter (rsLoRA, DoRA) to a kerasft base model.

    The adapter's modules become `LoRA` targets by their keras layer paths
    (ranks per layer from the tensors, so `rank_pattern` is honoured), and
    the factors are loaded transposed into kerasft's layout. If anything
    does not fit, the model is left as it was.

    Args:
        model: the keras-hub Gemma / Gemma 3 base the adapter was trained on,
            with no recipe applied.
        directory: a PEFT adapter folder.

    Returns:
        `model`, with the adapter applied: its logits equal PEFT's.

    Raises:
        FileNotFoundError / ValueError: see `read_peft_config`; a ValueError
            also for a tensor with no place in the model (naming the key), a
            module without both factors, or a model that already has recipes.
    """
    from kerasft.recipes.lora import LoRA

    directory = pathlib.Path(directory)
    config = read_peft_config(directory)
    tensors = load_tensors(directory / PEFT_WEIGHTS_FILE)
    if split_merged_recipes(model)[1] or adapter_wrappers(model):
        raise ValueError(
            "`model` already has kerasft adapters; load a PEFT adapter onto the base model. "
            f"Received: directory={str(directory)!r}"
        )
    factors = {}
    for key, array in tensors.items():
        for suffix, part in ((".lora_A.weight", "a"), (".lora_B.weight", "b"),
                             (".lora_magnitude_vector", "m"),
                             (".lora_magnitude_vector.weight", "m")):
            if key.endswith(suffix):
                module = key[: -len(suffix)]
                factors.setdefault(keras_layer_path(module), {})[part] = (key, array)
                break
        else:
            raise ValueError(
                f"{directory / PEFT_WEIGHTS_FILE}: a tensor kerasft's LoRA has no place for. "
                f"Received: key={key!r}"
            )
    use_dora = bool(config.get("use_dora", False))
    for path, parts in factors.items():
        needed = {"a", "b", "m"} if use_dora else {"a", "b"}
        if set(parts) != needed:
            raise ValueError(
                f"{directory / PEFT_WEIGHTS_FILE}: module of {path!r} has the tensors "
                f"{sorted(k for k, _ in parts.values())}; expected {sorted(needed)} parts"
            )
    rank = int(config["r"])
    ranks = {path: int(parts["a"][1].shape[0]) for path, parts in factors.items()}
    recipe = LoRA(
        rank=rank,
        alpha=config.get("lora_alpha", 8),
        dropout=config.get("lora_dropout", 0.0) or 0.0,
        targets=sorted(factors),
        use_rslora=bool(config.get("use_rslora", False)),
        rank_pattern={path: r for path, r in ranks.items() if r != rank} or None,
        use_dora=use_dora,
    )
    record = applied_recipes(model)
    try:
        with undo_surgery_on_error(model):
            model = recipe.apply_for_loading(model)
            wrappers = {w.target_path: w for w in adapter_wrappers(model)}
            missing = sorted(set(factors) - set(wrappers))
            if missing:
                raise ValueError(f"No layer in `model` at the adapter's paths {missing}")
            values = []
            for path, parts in factors.items():
                wrapper = wrappers[path]
                a = parts["a"][1].T.reshape(tuple(wrapper.lora_a.shape))
                b = parts["b"][1].T.reshape(tuple(wrapper.lora_b.shape))
                values += [(wrapper.lora_a, a), (wrapper.lora_b, b)]
                if use_dora:
                    values.append((wrapper.magnitude,
                                   parts["m"][1].reshape(tuple(wrapper.magnitude.shape))))
            for variable, value in values:
                variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))
    except BaseException:
        restore_applied_recipes(model, record)
        raise
    return model
