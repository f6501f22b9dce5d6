import io

import keras
import keras_hub
import numpy as np
import pytest
import sentencepiece

from kerasft.evaluate import (
    bleu,
    exact_match,
    generate_and_score,
    generate_token_ids,
    greedy_generate,
    rouge_l,
    token_f1,
)

SEQUENCE_LENGTH = 24
PROMPTS = [
    "<start_of_turn>user\nsky color<end_of_turn>\n<start_of_turn>model\n",
    "the cat",
    "a quick brown fox jumps over the lazy dog and",
]
REFERENCES = ["blue", "sat on the mat", "ran to the park"]


def _tiny_tokenizer():
    """A real `Gemma3Tokenizer` over a SentencePiece model trained in memory."""
    words = (
        "the cat sat on a mat dog ran to park bird flew over tree red blue "
        "green small big quick brown fox jumps lazy answer question what is "
        "color of sky user model and yes no one two three four five"
    ).split()
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(words, 8)) for _ in range(400)]
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=proto,
        vocab_size=100,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        minloglevel=2,
    )
    return keras_hub.models.Gemma3Tokenizer(proto=proto.getvalue(), has_vision_tokens=False)


@pytest.fixture(scope="module")
def causal_lm():
    return _tiny_causal_lm()


def _tiny_causal_lm():
    tokenizer = _tiny_tokenizer()
    preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(
        tokenizer, sequence_length=SEQUENCE_LENGTH
    )
    keras.utils.set_random_seed(3)
    # The settings of `kerasft.testing.tiny_gemma3_backbone`, sized to the
    # tokenizer's vocabulary.
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        image_size=16,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
        query_head_norm=True,
        key_head_norm=True,
        use_sliding_window_attention=True,
        sliding_window_size=4,
        vision_encoder=None,
    )
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=preprocessor)


@pytest.fixture(scope="module")
def one_by_one(causal_lm):
    return [
        causal_lm.generate([prompt], max_length=SEQUENCE_LENGTH, strip_prompt=True)[0]
        for prompt in PROMPTS
    ]


def test_tokenizer_fixture(causal_lm):
    tokenizer = causal_lm.preprocessor.tokenizer
    assert tokenizer.vocabulary_size() == causal_lm.backbone.vocabulary_size
    assert 50 <= tokenizer.vocabulary_size() <= 100
    assert (tokenizer.pad_token_id, tokenizer.end_token_id, tokenizer.start_token_id) == (0, 1, 2)
    assert tokenizer.token_to_id("<end_of_turn>") == 5
    assert tokenizer.detokenize(tokenizer("the cat sat")) == "the cat sat"


def test_batched_greedy_equals_one_by_one(causal_lm, one_by_one):
    # Prompts of different lengths in one batch (and, with batch_size=2 in
    # the next test, a last batch of one prompt filled up to the batch size).
    outputs = greedy_generate(causal_lm, PROMPTS, max_length=SEQUENCE_LENGTH, batch_size=3)
    assert outputs == one_by_one
    # The random model still generates something, and not the same for all.
    assert all(output.strip() for output in one_by_one)
    assert len(set(one_by_one)) == len(PROMPTS)


def test_outputs_do_not_contain_the_prompt(causal_lm, one_by_one):
    full = causal_lm.generate(["the cat"], max_length=SEQUENCE_LENGTH)[0]
    # SentencePiece drops the leading space of a decoded text, so compare
    # without spaces.
    assert full.replace(" ", "") == ("the cat" + one_by_one[1]).replace(" ", "")
    assert not one_by_one[1].startswith("the cat")


def test_metrics_equal_the_pure_functions_on_the_outputs(causal_lm, one_by_one):
    result = generate_and_score(
        causal_lm,
        PROMPTS,
        REFERENCES,
        max_length=SEQUENCE_LENGTH,
        batch_size=2,
        progress=False,
    )
    outputs = result["outputs"]
    # Batches [0, 1] and [2, 2 (filler)]: still the one-by-one outputs.
    assert outputs == one_by_one
    for name, metric in [("exact_match", exact_match), ("token_f1", token_f1), ("rouge_l", rouge_l)]:
        per_example = [metric(o, r) for o, r in zip(outputs, REFERENCES)]
        assert [e[name] for e in result["per_example"]] == per_example
        assert result[name] == pytest.approx(np.mean(per_example), abs=1e-12)
    assert result["bleu"] == bleu(outputs, REFERENCES)
    assert [e["prompt"] for e in result["per_example"]] == PROMPTS


def test_metrics_on_a_model_that_answers_correctly(causal_lm, one_by_one):
    # Using the generated outputs as references: every metric is 1, except
    # BLEU when an output is shorter than 4 tokens (then 0, see `bleu`).
    result = generate_and_score(
        causal_lm, PROMPTS, one_by_one, max_length=SEQUENCE_LENGTH, batch_size=3, progress=False
    )
    assert result["exact_match"] == 1.0
    assert result["token_f1"] == 1.0
    assert result["rouge_l"] == pytest.approx(1.0)


def test_the_model_sampler_is_restored(causal_lm):
    sampler = keras_hub.samplers.TopKSampler(k=5)
    causal_lm.sampler = sampler
    causal_lm.generate_function = None
    try:
        outputs = greedy_generate(causal_lm, PROMPTS, max_length=SEQUENCE_LENGTH, batch_size=3)
        assert len(outputs) == len(PROMPTS)
        assert causal_lm.sampler is sampler
        assert causal_lm.generate_function is None
    finally:
        causal_lm.sampler = keras_hub.samplers.GreedySampler()
        causal_lm.generate_function = None


def test_a_recipe_applied_between_calls_is_generated_from():
    from kerasft.evaluate import generation
    from kerasft.recipes import LoRA

    model = _tiny_causal_lm()
    before = greedy_generate(model, PROMPTS, max_length=SEQUENCE_LENGTH)
    LoRA(rank=2, alpha=4, targets=("query", "value", "ffw_linear")).apply(model)
    for variable in model.trainable_weights:
        variable.assign(keras.random.normal(variable.shape, seed=4))
    after = greedy_generate(model, PROMPTS, max_length=SEQUENCE_LENGTH)
    assert after != before
    generation._GREEDY.pop(model)
    assert greedy_generate(model, PROMPTS, max_length=SEQUENCE_LENGTH) == after


def test_bad_arguments(causal_lm):
    with pytest.raises(ValueError, match=r"len\(prompts\)=2, len\(references\)=1"):
        generate_and_score(causal_lm, ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="batch_size=0"):
        generate_and_score(causal_lm, ["a"], ["a"], batch_size=0)
    with pytest.raises(ValueError, match="preprocessor=None"):
        generate_and_score(
            keras_hub.models.Gemma3CausalLM(backbone=causal_lm.backbone, preprocessor=None),
            ["a"],
            ["a"],
        )


@pytest.mark.parametrize("kind", ["gemma", "gemma3"])
def test_generate_token_ids_without_a_preprocessor_is_greedy_decoding(kind):
    from kerasft import testing

    model = testing.tiny_causal_lm(kind)
    model.compile(sampler="greedy")
    prompt = {
        "token_ids": np.array([[2, 5, 6, 7, 0, 0, 0], [2, 9, 0, 0, 0, 0, 0]], "int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]], bool),
    }
    out = generate_token_ids(model, prompt)
    tokens = out["token_ids"]
    assert out["padding_mask"].all()
    np.testing.assert_array_equal(tokens[0, :4], [2, 5, 6, 7])
    np.testing.assert_array_equal(tokens[1, :2], [2, 9])
    # Each generated token is the argmax of the model on the tokens before it.
    for row, start in ((0, 4), (1, 2)):
        for position in range(start, 7):
            context = {
                "token_ids": tokens[row : row + 1, :position],
                "padding_mask": np.ones((1, position), bool),
            }
            logits = keras.ops.convert_to_numpy(model(context))[0, -1]
            assert tokens[row, position] == int(np.argmax(logits)), (row, position)

    stop = int(tokens[0, 4])  # the first generated token ends row 0 at once
    stopped = generate_token_ids(model, prompt, stop_token_ids=[stop])
    np.testing.assert_array_equal(stopped["token_ids"][0, :5], tokens[0, :5])
    np.testing.assert_array_equal(stopped["padding_mask"][0], [1, 1, 1, 1, 1, 0, 0])


def test_generate_token_ids_rejects_text_and_one_dimensional_ids():
    from kerasft import testing

    model = testing.tiny_causal_lm("gemma")
    with pytest.raises(ValueError, match="Received: inputs=str"):
        generate_token_ids(model, "hello")
    with pytest.raises(ValueError, match=r"shape=\(3,\)"):
        generate_token_ids(model, {"token_ids": np.array([2, 5, 6])})
