"""One entry point for every training run: `python -m kerasft.finetune --config FILE`.

A run reads a config file (YAML or JSON; `recipes/configs/*.yaml` are the
shipped ones), loads the model and the data of its task, evaluates the model,
applies the config's recipe, trains it with `model.fit()`, evaluates again,
saves the adapter and the metrics under `output_dir`, and prints a
before/after table. Every setting lives in the config; `--set
section.key=value` overrides one (the value in YAML syntax).

    python -m kerasft.finetune --config recipes/configs/sft_lora.yaml
    kerasft --config recipes/configs/qlora.yaml --set training.epochs=2
    kerasft --config recipes/configs/dora.yaml --set model.name=tiny   # seconds

Sections (`?`: optional): `seed`, `output_dir`, `show_examples?` (greedy
generations printed before/after), `check_reload?` (load the saved adapter
onto a fresh base and report the largest output difference on 8 held-out
rows, `reload_max_abs_difference`); `model`: `name?` (`gemma3-270m`, the
default, or `tiny`: a random two-block Gemma 3 with the test tokenizer),
`dtype?`, `keep_quantized?` (`gemma3-270m` over the GGUF file's own quantized
blocks, the GGUF loop); `data`: the task's keys (see `kerasft.finetune.tasks`); `recipe`:
any recipe config; `training`: `batch_size`, `epochs`, `learning_rate`,
`weight_decay?`, `checkpoint?` (write a `kerasft.TrainingCheckpoint` under
`output_dir/checkpoint`), `gradient_accumulation_steps?` (token tasks),
`max_train_rows?` (text task); `merge?`: `requantize?` (fold the adapters in
after saving and report the logit change). A recipe that fits the
quantization error at `apply` (QLoRA with `residual_rank` or
`init: residual`) has the fit's mean relative error before -> after printed
and recorded.
"""

from kerasft.finetune.runner import SCHEMA, load_config, main, run

__all__ = ["SCHEMA", "load_config", "main", "run"]
