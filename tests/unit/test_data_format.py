"""QAFormatter: exact prompt/answer boundary, label masking, padding, and the tokenizer it is used with."""

from __future__ import annotations

import pytest
import torch

from unlearn.data.format import IGNORE_INDEX, QAFormatter
from unlearn.data.tokenizer import load_trained_tokenizer, save_tokenizer, train_tokenizer
from unlearn.errors import ConfigError, DataError

TEXTS = [
    "Question: Where was Kalor Venmi born?\nAnswer: Kalor Venmi was born in Lisbon.",
    "Question: What genre does Ottla Brisk write?\nAnswer: Ottla Brisk is best known for writing poetry.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


def test_tokenizer_special_tokens_and_roundtrip(tokenizer, tmp_path) -> None:
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<pad>",
        "<bos>",
        "<eos>",
        "<unk>",
    )
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}) == 3
    text = "Zyx Qwerty was born in Reykjavík, 1987!"  # unseen words and non-ASCII still round-trip
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    save_tokenizer(tokenizer, tmp_path)
    again = load_trained_tokenizer(tmp_path)
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.eos_token_id == tokenizer.eos_token_id


def test_tokenizer_training_is_deterministic(tokenizer) -> None:
    other = train_tokenizer(TEXTS, vocab_size=400)
    assert other.get_vocab() == tokenizer.get_vocab()


def test_encode_masks_exactly_the_prompt(tokenizer) -> None:
    fmt = QAFormatter(tokenizer)
    question, answer = "Where was Kalor Venmi born?", "Kalor Venmi was born in Lisbon."
    enc = fmt.encode(question, answer)
    prompt_ids = fmt.encode_prompt(question)
    assert prompt_ids[0] == tokenizer.bos_token_id
    n = len(prompt_ids)
    assert enc["input_ids"][:n] == prompt_ids
    assert enc["labels"][:n] == [IGNORE_INDEX] * n
    assert IGNORE_INDEX not in enc["labels"][n:]
    assert enc["labels"][n:] == enc["input_ids"][n:]
    assert enc["input_ids"][-1] == tokenizer.eos_token_id
    assert enc["attention_mask"] == [1] * len(enc["input_ids"])
    answer_tokens = [t for t in enc["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(answer_tokens) == answer + tokenizer.eos_token
    assert tokenizer.decode(enc["input_ids"]) == "<bos>" + fmt.prompt(question) + answer + "<eos>"


def test_truncation_and_too_long_prompt(tokenizer) -> None:
    fmt = QAFormatter(tokenizer, max_length=24)
    enc = fmt.encode("Where was Kalor Venmi born?", "Kalor Venmi was born in Lisbon. " * 5)
    assert len(enc["input_ids"]) == len(enc["labels"]) == 24
    with pytest.raises(DataError, match="max_length"):
        QAFormatter(tokenizer, max_length=5).encode("Where was Kalor Venmi born?", "Lisbon.")


def test_collate_right_pads(tokenizer) -> None:
    fmt = QAFormatter(tokenizer)
    a = fmt.encode("Where was Kalor Venmi born?", "Kalor Venmi was born in Lisbon.")
    b = fmt.encode("Hi?", "Yes.")
    batch = fmt.collate([a, b])
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert all(t.dtype == torch.long for t in batch.values())
    n_a, n_b = len(a["input_ids"]), len(b["input_ids"])
    assert batch["input_ids"].shape == (2, max(n_a, n_b))
    assert batch["input_ids"][1, :n_b].tolist() == b["input_ids"]
    assert (batch["input_ids"][1, n_b:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][1, n_b:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1].tolist() == [1] * n_b + [0] * (n_a - n_b)


def test_collate_prompts_left_pads(tokenizer) -> None:
    fmt = QAFormatter(tokenizer)
    batch = fmt.collate_prompts(["Where was Kalor Venmi born?", "Hi?"])
    short = fmt.encode_prompt("Hi?")
    assert batch["input_ids"][1, -len(short) :].tolist() == short
    assert batch["attention_mask"][1, : -len(short)].sum() == 0


def test_chat_template(tokenizer) -> None:
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    try:
        fmt = QAFormatter(tokenizer, use_chat_template=True, system_prompt="Be brief.")
        assert fmt.prompt("Hi?") == "<bos><system>Be brief.\n<user>Hi?\n<assistant>"
        ids = fmt.encode_prompt("Hi?")
        assert ids.count(tokenizer.bos_token_id) == 1, "bos already in the chat template must not be doubled"
        enc = fmt.encode("Hi?", "Yes.")
        assert tokenizer.decode([t for t in enc["labels"] if t != IGNORE_INDEX]) == "Yes.<eos>"
    finally:
        tokenizer.chat_template = None


def test_bad_arguments(tokenizer) -> None:
    with pytest.raises(ConfigError, match="template"):
        QAFormatter(tokenizer, template="no placeholder")
    with pytest.raises(ConfigError, match="use_chat_template"):
        QAFormatter(tokenizer, use_chat_template=True)
