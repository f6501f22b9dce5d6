"""Multiple-choice scoring: log-likelihoods computed by hand, accuracies counted by hand."""

import numpy as np
import pytest

from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer
from kerasft.evaluate.multiple_choice import continuation_scores, multiple_choice
from kerasft.finetune.models import load_model
from tests.conftest import to_numpy

QUESTIONS = [
    {"context": "The capital of France is", "options": [" Paris", " Rome", " a river"], "answer": 0},
    {"context": "Water freezes at", "options": [" zero degrees", " ten"], "answer": " ten"},
    {"context": "Two plus two is", "options": [" four", " five", " three", " six"], "answer": 2},
    {"context": "The sun rises in the", "options": [" east", " west"], "answer": 1},
]


@pytest.fixture(scope="module")
def model():
    return load_model("tiny")


def _hand_logprobs(model, tokenizer, pairs):
    """`(sum of option log-probabilities, option tokens)` per pair, by hand.

    All rows go through one call of the model, right-padded (a causal model's
    outputs at a position do not depend on later positions).
    """
    rows = []
    for context, option in pairs:
        context_ids = np.asarray(tokenizer(context)).tolist()
        option_ids = np.asarray(tokenizer(option)).tolist()
        rows.append((context_ids, option_ids, [tokenizer.start_token_id, *context_ids, *option_ids]))
    length = max(len(ids) for *_, ids in rows)
    token_ids = np.zeros((len(rows), length), "int32")
    for r, (*_, ids) in enumerate(rows):
        token_ids[r, : len(ids)] = ids
    logits = to_numpy(model({"token_ids": token_ids, "padding_mask": token_ids > 0}))
    results = []
    for r, (context_ids, option_ids, _) in enumerate(rows):
        total = 0.0
        for k, token in enumerate(option_ids):
            row = logits[r, len(context_ids) + k].astype("float64")
            total += row[token] - row.max() - np.log(np.sum(np.exp(row - row.max())))
        results.append((total, len(option_ids)))
    return results


def test_accuracies_equal_a_hand_count(model):
    tokenizer = model.preprocessor.tokenizer
    result = multiple_choice(model, QUESTIONS, batch_size=3, progress=False)
    answers = [0, 1, 2, 1]
    hits = {"acc": 0, "acc_norm": 0, "acc_token_norm": 0}
    all_hand = iter(_hand_logprobs(model, tokenizer, [(q["context"], o) for q in QUESTIONS
                                                      for o in q["options"]]))
    for question, answer, logprobs in zip(QUESTIONS, answers, result["logprobs"]):
        hand = [next(all_hand) for _ in question["options"]]
        np.testing.assert_allclose(logprobs, [h[0] for h in hand], rtol=1e-4, atol=1e-4)
        by_bytes = [h[0] / len(o.encode()) for h, o in zip(hand, question["options"])]
        by_tokens = [h[0] / h[1] for h in hand]
        hits["acc"] += int(np.argmax([h[0] for h in hand]) == answer)
        hits["acc_norm"] += int(np.argmax(by_bytes) == answer)
        hits["acc_token_norm"] += int(np.argmax(by_tokens) == answer)
    for key, count in hits.items():
        assert result[key] == count / len(QUESTIONS), key
    assert result["questions"] == 4


def test_greedy_flag_matches_greedy_decoding(model):
    tokenizer = model.preprocessor.tokenizer
    context = "The capital of France is"
    ids = [tokenizer.start_token_id, *np.asarray(tokenizer(context)).tolist()]
    # Decode three tokens greedily by hand, then score them as a continuation.
    generated = []
    buffer = np.zeros((1, len(ids) + 3), "int32")
    buffer[0, : len(ids)] = ids
    for step in range(3):  # one shape for every call (eager JAX compiles per shape)
        end = len(ids) + step
        logits = to_numpy(model({"token_ids": buffer, "padding_mask": buffer > 0}))
        generated.append(int(np.argmax(logits[0, end - 1])))
        buffer[0, end] = generated[-1]
    continuation = tokenizer.detokenize(np.array(generated, "int32"))
    continuation = continuation if isinstance(continuation, str) else continuation.numpy().decode()
    if np.asarray(tokenizer(continuation)).tolist() != generated:
        pytest.skip("the greedy tokens do not re-tokenise to themselves")
    scores = continuation_scores(model, [(context, continuation), (context, " Paris")])
    assert scores[0]["greedy"] is True
    assert scores[1]["greedy"] is (np.asarray(tokenizer(" Paris")).tolist() == generated[:2])


def test_batching_does_not_change_scores(model):
    pairs = [(q["context"], o) for q in QUESTIONS for o in q["options"]]
    one = continuation_scores(model, pairs, batch_size=1)
    many = continuation_scores(model, pairs, batch_size=16)
    np.testing.assert_allclose([s["logprob"] for s in one], [s["logprob"] for s in many], atol=1e-4)


def test_bad_questions_are_named(model):
    with pytest.raises(ValueError, match="answer=' Lyon'"):
        multiple_choice(model, [{"context": "a", "options": [" b", " c"], "answer": " Lyon"}])
    with pytest.raises(ValueError, match="question 0"):
        multiple_choice(model, [{"context": "a", "options": [" b"], "answer": 0}])
    preprocessor, model.preprocessor = model.preprocessor, None
    try:
        with pytest.raises(ValueError, match="tokenizer=None"):
            multiple_choice(model, QUESTIONS, tokenizer=None)
        # With the tokenizer passed, no preprocessor is needed.
        assert multiple_choice(model, QUESTIONS[:1], tokenizer=tiny_gemma_tokenizer(),
                               progress=False)["questions"] == 1
    finally:
        model.preprocessor = preprocessor
