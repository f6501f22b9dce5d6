import hashlib
import json

import numpy as np

from kerasft import testing
from kerasft.recipes import LoRA
from kerasft.run_fingerprint import (
    canonical_json,
    config_differences,
    training_config,
    training_fingerprint,
)


def test_the_run_config_leaves_out_instance_names_and_backend_modules():
    configs = []
    for _ in range(2):
        model = testing.tiny_causal_lm("gemma3")
        recipe = LoRA(rank=4)
        recipe.apply(model)
        recipe.compile(model, total_steps=10, gradient_accumulation_steps=2, loss_scale=True)
        configs.append(training_config(model, {"rows": 8}))
    assert configs[0] == configs[1]
    text = json.dumps(configs[0])
    assert "keras.src.backend" not in text and "loss_scale_optimizer" not in text
    assert configs[0]["optimizer"]["inner_optimizer"]["config"]["gradient_accumulation_steps"] == 2


def test_data_config_is_made_json_safe_without_memory_addresses():
    model = testing.tiny_causal_lm("gemma3")
    recipe = LoRA(rank=4)
    recipe.apply(model)
    recipe.compile(model, total_steps=10)
    data = {"rows": np.int64(8), "cap": float("inf"), "tokenizer": object(), 3: (1, 2)}
    config = training_config(model, data)
    assert config["data"] == {
        "rows": 8, "cap": "inf", "tokenizer": "<builtins.object>", "3": [1, 2]
    }
    assert json.loads(canonical_json(config)) == config


def test_the_fingerprint_is_the_sha256_of_sorted_compact_json():
    config = {"recipe": {"rank": 4, "alpha": 16.0}, "optimizer": None, "data": {"b": 1, "a": [2]}}
    reordered = {"data": {"a": [2], "b": 1}, "optimizer": None, "recipe": {"alpha": 16.0, "rank": 4}}
    text = canonical_json(config)
    assert text == '{"data":{"a":[2],"b":1},"optimizer":null,"recipe":{"alpha":16.0,"rank":4}}'
    assert training_fingerprint(config) == hashlib.sha256(text.encode()).hexdigest()
    assert training_fingerprint(reordered) == training_fingerprint(config)
    assert training_fingerprint({**config, "data": None}) != training_fingerprint(config)


def test_config_differences_name_each_part_and_key():
    saved = {
        "recipe": {"alpha": 8.0, "targets": ["query"], "dropout": 0.0},
        "optimizer": {"config": {"learning_rate": 0.01}},
        "data": None,
    }
    current = {
        "recipe": {"alpha": 32.0, "targets": ["query"]},
        "optimizer": {"config": {"learning_rate": 0.01}},
        "data": {"split": "train"},
    }
    assert config_differences(saved, current) == [
        "recipe differs in alpha (checkpoint 8.0, this run 32.0), "
        "dropout (checkpoint 0.0, this run missing)",
        'data differs (checkpoint null, this run {"split": "train"})',
    ]
    assert config_differences(saved, saved) == []
    many = {"recipe": {f"k{i}": i for i in range(10)}}
    other = {"recipe": {f"k{i}": i + 1 for i in range(10)}}
    [line] = config_differences(many, other)
    assert line.endswith("k7 (checkpoint 7, this run 8) and 2 more")
    long = {"data": "x" * 100}
    [line] = config_differences({"data": None}, long)
    assert line == f'data differs (checkpoint null, this run "{"x" * 56}...)'
