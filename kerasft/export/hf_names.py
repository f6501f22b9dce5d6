"""Hugging Face module names of the dense layers of keras-hub Gemma / Gemma 3 models.

`decoder_block_3/attention/query` is `model.layers.3.self_attn.q_proj` in
transformers' `GemmaForCausalLM` / `Gemma3ForCausalLM`. Mirrors the weight
maps of keras-hub 0.32's exporter
(`keras_hub/src/utils/transformers/export/gemma.py`, `.../gemma3.py`):
keras-hub's `query`/`key`/`value`/`attention_output`, `ffw_gating`,
`ffw_gating_2`, `ffw_linear` are `q_proj`/`k_proj`/`v_proj`/`o_proj`,
`gate_proj`, `up_proj`, `down_proj`. A kernel's fan-in (fan-out) axes,
flattened in C order in the kernel's axis order, are the `in_features`
(`out_features`) of the HF `nn.Linear` (tests/export/test_peft.py checks
this against transformers).
"""

import re

HF_LAYER_NAMES = {
    "attention/query": "self_attn.q_proj",
    "attention/key": "self_attn.k_proj",
    "attention/value": "self_attn.v_proj",
    "attention/attention_output": "self_attn.o_proj",
    "ffw_gating": "mlp.gate_proj",
    "ffw_gating_2": "mlp.up_proj",
    "ffw_linear": "mlp.down_proj",
}
_KERAS_LAYER_NAMES = {hf: keras for keras, hf in HF_LAYER_NAMES.items()}
_KERAS_PATH = re.compile(r"^(?:.*/)?decoder_block_(\d+)/(.+)$")
_HF_NAME = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(self_attn\.[a-z_]+|mlp\.[a-z_]+)$")


def hf_module_name(path: str) -> str:
    """`model.layers.{i}.self_attn.q_proj` for the keras layer path `decoder_block_{i}/attention/query`.

    Raises:
        ValueError: for a path with no transformers counterpart.
    """
    match = _KERAS_PATH.match(path)
    if not match or match.group(2) not in HF_LAYER_NAMES:
        raise ValueError(
            "Only the attention and MLP dense layers of Gemma / Gemma 3 decoder blocks have "
            f"a Hugging Face module name ({sorted(HF_LAYER_NAMES)}). Received: path={path!r}"
        )
    return f"model.layers.{match.group(1)}.{HF_LAYER_NAMES[match.group(2)]}"


def keras_layer_path(module_name: str) -> str:
    """The keras layer path for a Hugging Face module name (inverse of `hf_module_name`).

    Accepts any prefix before `layers.{i}.` (`base_model.model.model.layers.0.self_attn.q_proj`).

    Raises:
        ValueError: for a module kerasft cannot place.
    """
    match = _HF_NAME.match(module_name)
    if not match or match.group(2) not in _KERAS_LAYER_NAMES:
        raise ValueError(
            "Only the attention and MLP projections of Gemma decoder layers "
            f"({sorted(_KERAS_LAYER_NAMES)}) map to keras-hub layers. Received: "
            f"module={module_name!r}"
        )
    return f"decoder_block_{match.group(1)}/{_KERAS_LAYER_NAMES[match.group(2)]}"
