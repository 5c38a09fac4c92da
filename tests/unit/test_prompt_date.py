"""The chat-template date is pinned: prompts, and the fingerprint that keys cached reference evaluations, do not
change with the system date when `model.prompt.date_string` is set (and do change without it)."""

from __future__ import annotations

from datetime import datetime

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.utils import chat_template_utils

from unlearn.benchmarks.base import resolve_prompt
from unlearn.benchmarks.tofu.benchmark import tofu_task
from unlearn.benchmarks.tofu.data import TofuData
from unlearn.data.format import QAFormatter

# The date logic of Llama-3.x chat templates: today's date unless the caller passes `date_string`.
TEMPLATE = (
    "{{ bos_token }}{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
    "Today Date: {{ date_string }}\n{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = TEMPLATE
    return tok


def at(monkeypatch: pytest.MonkeyPatch, day: datetime) -> None:
    """Make the template's strftime_now see `day` as today."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return day

    monkeypatch.setattr(chat_template_utils, "datetime", Frozen)


def data() -> TofuData:
    row = {"question": "Who?", "answer": "Her.", "paraphrased_answer": "She.", "perturbed_answer": ["Him."]}
    return TofuData("forget10", [row], [row], [row], [row], [row])


def prompts_and_key(monkeypatch: pytest.MonkeyPatch, day: datetime, date_string: str | None) -> tuple[str, str]:
    at(monkeypatch, day)
    prompt = resolve_prompt({"prompt": {"use_chat_template": True, "template": "{question}",
                                        "system_prompt": "Be brief.", "date_string": date_string}})
    tok = tokenizer()
    fmt = QAFormatter(tok, template="{question}", use_chat_template=True, system_prompt="Be brief.",
                      date_string=prompt["date_string"])
    task = tofu_task("tofu", data(), tok, fmt, {"target": "t", "retain": "r"})
    return fmt.prompt("Who?"), task.fingerprint


def test_pinned_date_gives_the_same_prompt_and_cache_key_on_any_day(monkeypatch: pytest.MonkeyPatch) -> None:
    p1, k1 = prompts_and_key(monkeypatch, datetime(2026, 1, 2), "10 Apr 2025")
    p2, k2 = prompts_and_key(monkeypatch, datetime(2027, 7, 8), "10 Apr 2025")
    assert p1 == p2 and "10 Apr 2025" in p1
    assert k1 == k2


def test_unpinned_date_changes_prompt_and_cache_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the pin the prompt follows the system date, and so does the cache key: a reference evaluation made on
    another day is never reused for today's prompts."""
    p1, k1 = prompts_and_key(monkeypatch, datetime(2026, 1, 2), None)
    p2, k2 = prompts_and_key(monkeypatch, datetime(2027, 7, 8), None)
    assert "02 Jan 2026" in p1 and "08 Jul 2027" in p2
    assert k1 != k2


def test_llama3_tofu_config_pins_open_unlearnings_date() -> None:
    from pathlib import Path

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "model" / "llama32_1b_tofu.yaml")
    assert cfg.prompt.date_string == "10 Apr 2025"
