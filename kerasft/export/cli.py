"""`kerasft export` / `python -m kerasft.export`: a trained adapter out to PEFT, transformers or GGUF.

    kerasft export --format peft --adapter runs/sft_lora/adapter --output out/peft
    kerasft export --format hf   --adapter runs/sft_lora/adapter --output out/hf
    kerasft export --format gguf --adapter runs/sft_lora/adapter --output out/model.gguf

`--adapter` is a kerasft adapter folder, a PEFT adapter folder (for `hf` and
`gguf`), or a `save_adapters` folder (then `--adapter-name` picks one; the
saved active one by default). `hf` and `gguf` merge the adapter into the
written weights; the base model comes from `--model` (a `kerasft.finetune`
model name).
"""

import argparse
import pathlib
import sys
from typing import Sequence

FORMATS = ("peft", "hf", "gguf")


def _parser():
    parser = argparse.ArgumentParser(prog="kerasft export", description=__doc__.split("\n")[0])
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--model", default="gemma3-270m",
                        help="a kerasft.finetune model name: gemma3-270m or tiny")
    parser.add_argument("--adapter", default=None, help="the adapter folder (none: the base)")
    parser.add_argument("--adapter-name", default=None,
                        help="which adapter of a save_adapters folder")
    parser.add_argument("--output", required=True, help="the folder (peft, hf) or .gguf file")
    parser.add_argument("--base-model-name", default=None,
                        help="peft: base_model_name_or_path written to adapter_config.json")
    parser.add_argument("--gguf-type", default="F32",
                        help="gguf: the type of every matrix (F32, F16, Q8_0, ...)")
    return parser


def load_adapted_model(model_name: str, adapter: str | None, adapter_name: str | None = None):
    """The base model with `adapter` (any folder kind `kerasft export` takes) applied."""
    from kerasft.adapter_switch import NAMED_ADAPTERS_FILE, load_adapters, set_adapter
    from kerasft.adapters import load_adapter
    from kerasft.export.peft import PEFT_WEIGHTS_FILE, load_peft_adapter
    from kerasft.finetune.models import load_model

    model = load_model(model_name)
    if adapter is None:
        return model
    folder = pathlib.Path(adapter)
    if (folder / NAMED_ADAPTERS_FILE).is_file():
        load_adapters(model, folder)
        if adapter_name is not None:
            set_adapter(model, adapter_name)
        return model
    if adapter_name is not None:
        raise ValueError(
            "`--adapter-name` picks one adapter of a `save_adapters` folder. Received: "
            f"--adapter {adapter} (no {NAMED_ADAPTERS_FILE}), --adapter-name {adapter_name}"
        )
    if (folder / PEFT_WEIGHTS_FILE).is_file():
        return load_peft_adapter(model, folder)
    return load_adapter(model, folder)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `kerasft export`; returns 0, or 2 with the reason on stderr."""
    args = _parser().parse_args(None if argv is None else list(argv))
    try:
        model = load_adapted_model(args.model, args.adapter, args.adapter_name)
        output = pathlib.Path(args.output)
        if args.format == "peft":
            from kerasft.export.peft import save_peft_adapter

            save_peft_adapter(model, output, base_model_name_or_path=args.base_model_name)
        elif args.format == "hf":
            from kerasft.export.hf import export_hf

            export_hf(model, output)
        else:
            from kerasft.models.gemma3_gguf_export import write_gemma3_gguf

            write_gemma3_gguf(model, str(output), default_tensor_type=args.gguf_type)
    except (ValueError, FileNotFoundError) as error:
        print(f"kerasft export: {error}", file=sys.stderr)
        return 2
    print(f"kerasft export: wrote {args.format} to {output}")
    return 0
