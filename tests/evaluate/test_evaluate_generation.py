import io

import keras
import keras_hub
import numpy as np
import pytest
import sentencepiece

from kerasft import testing
from kerasft.evaluate import (
    bleu,
    exact_match,
    generate_and_score,
    generate_token_ids,
    greedy_generate,
    model_logits,
    normalize_answer,
    rouge_l,
    token_f1,
)
from kerasft.models import architecture

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
    backbone = testing.tiny_gemma3_backbone(seed=3, vocabulary_size=tokenizer.vocabulary_size())
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
            logits = model_logits(model, context)[0, -1]
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


def _tiny_chat_model(kind):
    """A tiny Gemma / Gemma 3 CausalLM with the tiny Gemma-style tokenizer."""
    from kerasft import testing
    from kerasft.data.testing_tokenizer import (
        TINY_TOKENIZER_VOCABULARY_SIZE,
        tiny_sentencepiece_proto,
    )

    proto = tiny_sentencepiece_proto()
    if kind == "gemma":
        tokenizer = keras_hub.models.GemmaTokenizer(proto=proto)
        preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, sequence_length=16)
        backbone = testing.tiny_gemma_backbone(vocabulary_size=TINY_TOKENIZER_VOCABULARY_SIZE)
        return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=preprocessor)
    tokenizer = keras_hub.models.Gemma3Tokenizer(proto=proto, has_vision_tokens=False)
    preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(tokenizer, sequence_length=16)
    backbone = testing.tiny_gemma3_backbone(vocabulary_size=TINY_TOKENIZER_VOCABULARY_SIZE)
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=preprocessor)


# No <end_of_turn> in the prompt: the test below changes that token's
# embedding, which must not change how the prompt is read.
CHAT_PROMPT = "<start_of_turn>user\nDefine the word cat.\n<start_of_turn>model\n"


def _greedy_ids(model, prompt, length):
    """The greedy continuation of `prompt` (token ids, no stop token)."""
    inputs = model.preprocessor.generate_preprocess([prompt], sequence_length=length)
    mask = np.asarray(keras.ops.convert_to_numpy(inputs["padding_mask"])).astype(bool)
    model.compile(sampler="greedy")
    out = generate_token_ids(
        model,
        {"token_ids": np.asarray(keras.ops.convert_to_numpy(inputs["token_ids"])), "padding_mask": mask},
    )
    return [int(t) for t in out["token_ids"][0][mask[0].sum() :]]


@pytest.mark.parametrize("kind", ["gemma", "gemma3"])
def test_an_output_that_ends_at_end_of_turn_is_scored_without_it(kind):
    # The situation of a tuned model: it answers, then emits <end_of_turn>.
    # Forced here through the tied embedding: <end_of_turn>'s row becomes a
    # copy of the row of a token the model generates, scaled by 1 +- 1% so
    # that its logit is slightly larger where that token wins, and greedy
    # decoding emits <end_of_turn> there instead.
    model = _tiny_chat_model(kind)
    tokenizer = model.preprocessor.tokenizer
    end_of_turn = tokenizer.token_to_id("<end_of_turn>")
    assert (end_of_turn, tokenizer.end_token_id) == (5, 1)
    length = 40
    free = _greedy_ids(model, CHAT_PROMPT, length)
    position = next(
        i
        for i, t in enumerate(free)
        if t > 5 and t not in free[:i] and normalize_answer(tokenizer.detokenize([free[:i]])[0])
    )
    context = [int(t) for t in np.asarray(tokenizer(CHAT_PROMPT))] + free[:position]
    context = [tokenizer.start_token_id] + context
    logits = model_logits(model, np.array([context], "int32"))[0, -1]
    assert int(np.argmax(logits)) == free[position]
    embeddings = architecture.token_embedding(model).embeddings
    table = np.array(keras.ops.convert_to_numpy(embeddings))
    table[end_of_turn] = (1.01 if logits[free[position]] > 0 else 0.99) * table[free[position]]
    embeddings.assign(table)
    forced = _greedy_ids(model, CHAT_PROMPT, length)
    stop = next(i for i, t in enumerate(forced) if t in (1, 5))
    assert forced[stop] == end_of_turn and stop >= 1
    # The answer: the tokens before the marker (none of them special).
    answer_ids = forced[:stop]
    assert all(t > 5 for t in answer_ids)
    reference = tokenizer.detokenize([answer_ids])[0]
    assert normalize_answer(reference)

    result = generate_and_score(
        model, [CHAT_PROMPT], [reference], max_length=length, batch_size=1, progress=False
    )
    # Before the fix: the output was reference + "<end_of_turn>" (and on
    # Gemma it went on past it), and exact match was 0.0.
    assert result["exact_match"] == 1.0
    assert result["token_f1"] == 1.0
    assert result["outputs"] == [reference]
    assert "<end_of_turn>" not in result["per_example"][0]["output"]
    # The raw ids stay available: the answer and the stop token.
    assert result["output_token_ids"] == [answer_ids + [end_of_turn]]
    assert result["per_example"][0]["output_token_ids"] == answer_ids + [end_of_turn]
    assert greedy_generate(model, [CHAT_PROMPT], max_length=length) == [reference]
    from kerasft.evaluate import describe_metrics, rouge_n

    assert result["metrics"] == describe_metrics()
    assert result["rouge_1"] == rouge_n(reference, reference, 1)


def test_decode_generated_drops_special_tokens_by_id_and_stops_at_the_first_stop():
    from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer
    from kerasft.evaluate import decode_generated, resolve_stop_token_ids, special_token_ids

    tokenizer = tiny_gemma_tokenizer()
    words = [int(t) for t in np.asarray(tokenizer("the cat"))]
    more = [int(t) for t in np.asarray(tokenizer(" sat"))]
    assert tokenizer.detokenize([words + more])[0] == "the cat sat"
    assert special_token_ids(tokenizer) == {0, 1, 2, 4, 5}
    assert resolve_stop_token_ids(tokenizer, "auto") == (1, 5)
    assert resolve_stop_token_ids(tokenizer, None) is None
    # <pad>, <bos>, <start_of_turn> inside are dropped; the text ends at the
    # first stop id (<end_of_turn>, 5) and what follows it is not shown.
    ids = [0, 2] + words + [4] + more + [5] + words + [1]
    assert decode_generated(tokenizer, ids, stop_token_ids=(1, 5)) == "the cat sat"
    # Without stop ids, every special token is still dropped.
    assert decode_generated(tokenizer, ids) == "the cat satthe cat"
    assert decode_generated(tokenizer, [5, 1], stop_token_ids=(1, 5)) == ""
    with pytest.raises(ValueError, match="stop_token_ids='eos'"):
        resolve_stop_token_ids(tokenizer, "eos")
