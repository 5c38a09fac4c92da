"""Prompt/answer encoding and collation for question-answer rows.

Every loss and every metric in the framework is computed on *answer tokens only*, so the place where the prompt
ends and the answer begins must be exact. We therefore tokenise the prompt and the answer separately and
concatenate the ids, instead of tokenising the joined string and guessing the boundary from character offsets
(which silently shifts by one token when a tokenizer merges across the boundary).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from unlearn.data.text import IGNORE_INDEX, pad_collate
from unlearn.errors import ConfigError, DataError

__all__ = ["DEFAULT_TEMPLATE", "IGNORE_INDEX", "QAFormatter"]


DEFAULT_TEMPLATE = "Question: {question}\nAnswer: "


class QAFormatter:
    """Turns (question, answer) pairs into model inputs with labels masked on the prompt.

    Args:
        tokenizer: a Hugging Face tokenizer (fast or slow). Its `eos_token_id` ends every answer; its
            `bos_token_id`, when defined, starts every sequence; its `pad_token_id` (or eos when it has none,
            as Llama 3 does) pads batches.
        template: a `str.format` template with a `{question}` field, used when `use_chat_template` is false.
        max_length: sequences are cut to this many tokens (right truncation, the answer's tail goes first).
        use_chat_template: build the prompt with `tokenizer.apply_chat_template` (system + user message,
            generation prompt appended), as instruction-tuned TOFU models expect.
        system_prompt: optional system message for the chat template.
        date_string: the date a chat template writes into the prompt. Llama-3 templates insert *today's* date
            when none is given (transformers renders `strftime_now`), so prompts, and every score computed from
            them, would change from day to day; open-unlearning's TOFU targets were evaluated with
            "10 Apr 2025". Passed to the template only when set.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: str = DEFAULT_TEMPLATE,
        max_length: int = 512,
        use_chat_template: bool = False,
        system_prompt: str | None = None,
        date_string: str | None = None,
    ) -> None:
        if "{question}" not in template:
            raise ConfigError(f"prompt.template: must contain '{{question}}', got {template!r}")
        if max_length < 2:
            raise ConfigError(f"prompt.max_length: must be >= 2, got {max_length}")
        if tokenizer.eos_token_id is None:
            raise ConfigError("model tokenizer: has no eos token; answers could not be terminated")
        if use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("prompt.use_chat_template: true, but the tokenizer defines no chat template")
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = int(max_length)
        self.use_chat_template = bool(use_chat_template)
        self.system_prompt = system_prompt
        self.date_string = date_string
        self.eos_id: int = int(tokenizer.eos_token_id)
        self.bos_id: int | None = None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id: int = self.eos_id if pad is None else int(pad)

    # ------------------------------------------------------------------ prompts
    def prompt(self, question: str) -> str:
        """The prompt text for `question` (what the model sees before it answers)."""
        if not self.use_chat_template:
            return self.template.format(question=question)
        messages: list[dict[str, str]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": question})
        extra = {} if self.date_string is None else {"date_string": self.date_string}
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        if not isinstance(text, str):  # pragma: no cover - defensive against API drift
            raise ConfigError("prompt.use_chat_template: apply_chat_template did not return a string")
        return text

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, question: str) -> list[int]:
        """Prompt token ids, bos included when the tokenizer has one and the prompt text lacks it.

        Chat templates usually write the bos token into the text themselves; adding a second one would
        change every score, hence the check.
        """
        ids = self._ids(self.prompt(question))
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id, *ids]
        return ids

    def encode_answer(self, answer: str) -> list[int]:
        """Answer token ids followed by eos."""
        return [*self._ids(answer), self.eos_id]

    # ------------------------------------------------------------------ training examples
    def encode(self, question: str, answer: str) -> dict[str, list[int]]:
        """Encode one pair: ids = prompt ids + answer ids + eos; labels -100 on the prompt.

        Raises DataError when the prompt alone fills `max_length`, because an example with no answer token
        has no loss and would turn a per-example mean into NaN.
        """
        prompt_ids = self.encode_prompt(question)
        answer_ids = self.encode_answer(answer)
        if len(prompt_ids) >= self.max_length:
            raise DataError(
                f"question too long: its prompt has {len(prompt_ids)} tokens, max_length is "
                f"{self.max_length}: {question[:80]!r}"
            )
        ids = (prompt_ids + answer_ids)[: self.max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[: self.max_length]
        return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}

    def encode_rows(self, rows: Sequence[dict[str, Any]], answer_key: str = "answer") -> list[dict]:
        """Encode `question` with `row[answer_key]` for every row (e.g. `paraphrased_answer`)."""
        return [self.encode(r["question"], r[answer_key]) for r in rows]

    def collate(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Right-pad encoded examples into LongTensors; padding has labels -100 and attention 0."""
        return pad_collate(examples, self.pad_id)

    # ------------------------------------------------------------------ generation
    def collate_prompts(self, questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-pad prompts for batched generation (decoder-only models continue from the last column)."""
        if not questions:
            raise ValueError("collate_prompts: empty batch")
        encoded = [self.encode_prompt(q)[-self.max_length :] for q in questions]
        width = max(len(e) for e in encoded)
        ids = [[self.pad_id] * (width - len(e)) + e for e in encoded]
        mask = [[0] * (width - len(e)) + [1] * len(e) for e in encoded]
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }
