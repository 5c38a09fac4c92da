"""Tests for unlearn.evals.scoring on a tiny random Llama: NLLs against a hand loop, batch independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from tests.tiny_lm import make_model
from unlearn.data.format import IGNORE_INDEX, QAFormatter
from unlearn.evals.scoring import answer_nll, greedy_generate

SENTENCES = [
    "Question: Where was the author born?\nAnswer: The author was born in Paris.",
    "Question: What does she write?\nAnswer: She writes crime novels and short stories.",
    "Question: Who is his father?\nAnswer: His father is a baker from Rome.",
    "the cat sat on the mat. a dog ran to the park.",
]
QUESTIONS = [
    "Where was the author born?",
    "What does she write about in her long crime novels?",
    "Who?",
    "Who is his father and where does he live?",
    "What is the cat doing?",
]
ANSWERS = [
    "The author was born in Paris.",
    "She writes.",
    "His father is a baker from Rome, and the dog ran to the park on the mat.",
    "A baker.",
    "the cat sat on the mat",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A ~64-token BPE tokenizer trained on SENTENCES, with <pad>, <bos>, <eos>, <unk>."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=64, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"])
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def formatter(tokenizer: PreTrainedTokenizerFast) -> QAFormatter:
    return QAFormatter(tokenizer, max_length=128)


@pytest.fixture(scope="module")
def model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return make_model(tokenizer)


def hand_nll(model: LlamaForCausalLM, formatter: QAFormatter, question: str, answer: str) -> float:
    """One example, no padding: mean cross-entropy of the answer tokens (labels shifted by one)."""
    enc = formatter.encode(question, answer)
    ids = torch.tensor([enc["input_ids"]])
    labels = torch.tensor(enc["labels"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    return float(F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX))


def test_tokenizer_fixture_is_sane(tokenizer: PreTrainedTokenizerFast, formatter: QAFormatter) -> None:
    assert len(tokenizer) <= 64
    enc = formatter.encode(QUESTIONS[0], ANSWERS[0])
    assert tokenizer.unk_token_id not in enc["input_ids"]
    assert enc["input_ids"][-1] == tokenizer.eos_token_id


def test_answer_nll_matches_hand_loop(model: LlamaForCausalLM, formatter: QAFormatter) -> None:
    expected = np.array([hand_nll(model, formatter, q, a) for q, a in zip(QUESTIONS, ANSWERS, strict=True)])
    got = answer_nll(model, formatter, QUESTIONS, ANSWERS, batch_size=2)
    assert got.dtype == np.float64 and got.shape == (5,)
    assert np.all(expected > 0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_answer_nll_independent_of_batch_composition(model: LlamaForCausalLM, formatter: QAFormatter) -> None:
    # Lengths differ a lot (ANSWERS[2] is long), so batches carry much right padding.
    full = answer_nll(model, formatter, QUESTIONS, ANSWERS, batch_size=5)
    single = answer_nll(model, formatter, QUESTIONS, ANSWERS, batch_size=1)
    perm = [3, 0, 4, 2, 1]
    permuted = answer_nll(model, formatter, [QUESTIONS[i] for i in perm], [ANSWERS[i] for i in perm], 3)
    np.testing.assert_allclose(full, single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(permuted, full[perm], rtol=1e-5, atol=1e-6)
    # Different questions must give different values (guards against an accidental batch mean).
    assert len(np.unique(np.round(full, 6))) == 5


def test_answer_nll_restores_training_mode_and_low_precision(
    tokenizer: PreTrainedTokenizerFast, formatter: QAFormatter
) -> None:
    model = make_model(tokenizer)
    reference = answer_nll(model, formatter, QUESTIONS, ANSWERS)
    model.train()
    again = answer_nll(model, formatter, QUESTIONS, ANSWERS)
    assert model.training  # evaluation must not leave dropout off for the rest of training
    np.testing.assert_allclose(again, reference, rtol=1e-6)
    low = answer_nll(model.to(torch.bfloat16), formatter, QUESTIONS, ANSWERS)
    assert low.dtype == np.float64
    np.testing.assert_allclose(low, reference, rtol=0.05)


def test_answer_nll_errors(model: LlamaForCausalLM, formatter: QAFormatter) -> None:
    with pytest.raises(ValueError, match="2 questions but 1 answers"):
        answer_nll(model, formatter, QUESTIONS[:2], ANSWERS[:1])
    with pytest.raises(ValueError, match="batch_size"):
        answer_nll(model, formatter, QUESTIONS, ANSWERS, batch_size=0)
    assert answer_nll(model, formatter, [], []).shape == (0,)


def hand_greedy(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    formatter: QAFormatter,
    question: str,
    max_new_tokens: int,
) -> str:
    """Greedy decoding written out: append argmax of the last position's logits until eos or the limit."""
    ids = formatter.encode_prompt(question)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            tok = int(logits.argmax())
            if tok == tokenizer.eos_token_id:
                break
            new.append(tok)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_greedy_generate_matches_hand_loop_and_batching(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, formatter: QAFormatter
) -> None:
    expected = [hand_greedy(model, tokenizer, formatter, q, 12) for q in QUESTIONS]
    one = greedy_generate(model, tokenizer, formatter, QUESTIONS, max_new_tokens=12, batch_size=1)
    four = greedy_generate(model, tokenizer, formatter, QUESTIONS, max_new_tokens=12, batch_size=4)
    assert one == expected
    assert four == expected
    assert any(len(s) > 0 for s in expected)
    # The prompt is stripped: no generation starts by repeating the question template.
    assert not any(s.startswith("Question") for s in four)


def test_greedy_generate_ignores_sampling_config(
    tokenizer: PreTrainedTokenizerFast, formatter: QAFormatter, model: LlamaForCausalLM
) -> None:
    greedy = greedy_generate(model, tokenizer, formatter, QUESTIONS, max_new_tokens=8)
    sampler = make_model(tokenizer)
    # A hub model may ship a sampling generation config; evaluation must still decode greedily.
    sampler.generation_config.do_sample = True
    sampler.generation_config.temperature = 5.0
    torch.manual_seed(123)
    assert greedy_generate(sampler, tokenizer, formatter, QUESTIONS, max_new_tokens=8) == greedy


def test_greedy_generate_stops_at_eos(tokenizer: PreTrainedTokenizerFast, formatter: QAFormatter) -> None:
    model = make_model(tokenizer)
    eos = tokenizer.eos_token_id

    def force_eos(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., eos] = output.max() + 10.0  # eos is the argmax at every position
        return output

    model.lm_head.register_forward_hook(force_eos)
    out = greedy_generate(model, tokenizer, formatter, QUESTIONS[:3], max_new_tokens=5, batch_size=2)
    assert out == ["", "", ""]
