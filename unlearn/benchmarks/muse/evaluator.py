"""MUSE evaluation: per-item VerbMem, KnowMem and Min-K% records, and a summary computed from them alone.

`MuseEvaluator.evaluate` runs the model once per item and records everything a MUSE number is built from (the
generation, its ROUGE-L against the reference, a text's Min-K% score); `summarise` turns those items, and the
retrained model's items, into MUSE's numbers (definitions and MUSE's code lines: docs/metrics.md#muse):

| split              | data                               | per item                                 | summary        |
|--------------------|------------------------------------|------------------------------------------|----------------|
| `verbmem_forget`   | `verbmem/forget` (prompt, gt)      | ROUGE-L F1 of the greedy continuation    | `verbmem_f`    |
| `knowmem_forget`   | `knowmem/forget_qa` (+ `_icl`)     | ROUGE-L F1 of the cut few-shot answer    | `knowmem_f`    |
| `knowmem_retain`   | `knowmem/retain_qa` (+ `_icl`)     | same                                     | `knowmem_r`    |
| `privleak_forget`  | `privleak/forget` (text)           | Min-K% score (k = 40%)                   | `privleak`     |
| `privleak_holdout` | `privleak/holdout` (text)          | Min-K% score                             |                |

VerbMem and KnowMem are reported x 100, as MUSE and the BLUR paper do. PrivLeak needs the retrained model's AUC:
from its items when the task has a `retain` model, else from `auc_retrain` (MUSE's published 0.4772 / 0.5393).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from unlearn.errors import ConfigError
from unlearn.evals.base import EVALUATORS, Evaluator
from unlearn.evals.metrics import rouge_l_recall
from unlearn.evals.muse_metrics import (
    PRIVLEAK_RATIO,
    cut_answer,
    knowmem_prompt,
    membership_auc,
    min_k_score,
    privleak,
    rouge_l_f1,
)
from unlearn.evals.scoring import continue_greedy, token_logprobs

if TYPE_CHECKING:
    from unlearn.benchmarks.base import Task
    from unlearn.benchmarks.muse.data import MuseData

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak_forget",
                           "privleak_holdout")
ITEM_COLUMNS: tuple[str, ...] = ("split", "idx", "prompt", "reference", "generation", "rouge", "rouge_recall",
                                 "min_k", "nll", "n_tokens")


def encode_with_bos(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` with bos in front (when the tokenizer has one), as MUSE's `add_special_tokens=True`
    gives for Llama, whose tokenizer adds bos and nothing else; done explicitly so every tokenizer agrees."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    return ids if bos is None else [int(bos), *ids]


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """MUSE's decoding: special tokens dropped. (MUSE also passes `clean_up_tokenization_spaces=True`, which
    transformers ignores for BPE tokenizers such as Llama-2's, so it is left at the tokenizer's setting.)"""
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def truncate_reference(tokenizer: Any, text: str, n_tokens: int) -> str:
    """VerbMem's ground truth: its first `n_tokens` token ids *counting bos*, decoded (MUSE cuts `gt` so)."""
    return decode(tokenizer, encode_with_bos(tokenizer, text)[:n_tokens])


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _mean_of(items: pd.DataFrame, split: str, column: str) -> np.ndarray:
    sub = items[items["split"] == split].sort_values("idx")
    if sub.empty:
        raise ValueError(f"summarise: items table has no rows for split {split!r}")
    return sub[column].to_numpy(dtype=np.float64)


def privleak_auc(items: pd.DataFrame) -> float:
    """AUC of holdout against forget texts by their Min-K% scores (docs/metrics.md#privleak)."""
    return membership_auc(_mean_of(items, "privleak_forget", "min_k"), _mean_of(items, "privleak_holdout", "min_k"))


def summarise_muse(items: pd.DataFrame, auc_retrain: float | None = None) -> dict[str, float]:
    """MUSE's summary from a per-item table alone: `verbmem_f`, `knowmem_f`, `knowmem_r` (x 100), `privleak_auc`,
    and `privleak` when the retrained model's AUC is known."""
    needed = {"split", "idx", "rouge", "min_k"}
    missing = sorted(needed - set(items.columns))
    if missing:
        raise ValueError(f"summarise: items table lacks column(s) {', '.join(missing)}")
    out = {
        "verbmem_f": 100.0 * float(_mean_of(items, "verbmem_forget", "rouge").mean()),
        "knowmem_f": 100.0 * float(_mean_of(items, "knowmem_forget", "rouge").mean()),
        "knowmem_r": 100.0 * float(_mean_of(items, "knowmem_retain", "rouge").mean()),
        "privleak_auc": privleak_auc(items),
    }
    if auc_retrain is not None:
        out["privleak"] = privleak(out["privleak_auc"], auc_retrain)
    return out


@EVALUATORS.register("muse")
class MuseEvaluator(Evaluator):
    """MUSE's VerbMem, KnowMem and PrivLeak; configured by `configs/eval/muse.yaml`.

    Args:
        batch_size: items per forward pass / generate call (results do not depend on it).
        verbmem_max_new_tokens: VerbMem continuation length, also the ground truth's cut (MUSE: 128).
        knowmem_max_new_tokens: KnowMem answer length (MUSE: 32).
        min_k_ratio: the Min-K% ratio of PrivLeak (MUSE: 0.4).
        max_items: evaluate only the first N items of each split (null: all, as MUSE).
        max_length: cut PrivLeak texts and VerbMem prompts to this many tokens (null: no cut, as MUSE; set it
            to the model's context length when texts are longer).
        auc_retrain: the retrained model's AUC when the task has no retain model (MUSE: 0.4772 News, 0.5393
            Books); ignored when it has one.
    """

    name = "muse"
    version = 1
    data = "muse"
    uses = ("retain",)
    headline = ("verbmem_f", "knowmem_f", "privleak", "knowmem_r")

    def __init__(
        self,
        batch_size: int = 16,
        verbmem_max_new_tokens: int = 128,
        knowmem_max_new_tokens: int = 32,
        min_k_ratio: float = PRIVLEAK_RATIO,
        max_items: int | None = None,
        max_length: int | None = None,
        auc_retrain: float | None = None,
    ) -> None:
        for key, value in (("batch_size", batch_size), ("verbmem_max_new_tokens", verbmem_max_new_tokens),
                           ("knowmem_max_new_tokens", knowmem_max_new_tokens)):
            if not _positive_int(value):
                raise ConfigError(f"eval.muse.{key}: must be a positive integer, got {value!r}")
        for key, value in (("max_items", max_items), ("max_length", max_length)):
            if value is not None and not _positive_int(value):
                raise ConfigError(f"eval.muse.{key}: must be a positive integer or null, got {value!r}")
        if isinstance(min_k_ratio, bool) or not isinstance(min_k_ratio, int | float) or not 0 < min_k_ratio <= 1:
            raise ConfigError(f"eval.muse.min_k_ratio: must be a number in (0, 1], got {min_k_ratio!r}")
        if auc_retrain is not None and (isinstance(auc_retrain, bool) or not isinstance(auc_retrain, int | float)
                                        or not 0 < auc_retrain <= 1):
            raise ConfigError(f"eval.muse.auc_retrain: must be a number in (0, 1] or null, got {auc_retrain!r}")
        self.batch_size = batch_size
        self.verbmem_max_new_tokens = verbmem_max_new_tokens
        self.knowmem_max_new_tokens = knowmem_max_new_tokens
        self.min_k_ratio = float(min_k_ratio)
        self.max_items = max_items
        self.max_length = max_length
        self.auc_retrain = None if auc_retrain is None else float(auc_retrain)

    def settings(self) -> dict[str, Any]:
        return {"verbmem_max_new_tokens": self.verbmem_max_new_tokens,
                "knowmem_max_new_tokens": self.knowmem_max_new_tokens, "min_k_ratio": self.min_k_ratio,
                "max_items": self.max_items, "max_length": self.max_length}

    # -------------------------------------------------------------------------------------------- model work
    def _first(self, rows: Sequence[Any]) -> list[Any]:
        return list(rows if self.max_items is None else rows[: self.max_items])

    def _cut(self, ids: list[int]) -> list[int]:
        return ids if self.max_length is None else ids[: self.max_length]

    def _pad_eos(self, model: Any, tokenizer: Any) -> tuple[int, list[int]]:
        eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
        extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        for e in [extra] if isinstance(extra, int) else list(extra or []):
            if int(e) not in eos:
                eos.append(int(e))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
        return int(pad), eos

    def _generate(self, model: Any, tokenizer: Any, prompts: list[str], max_new: int, cut_prompt: bool
                  ) -> list[str]:
        pad, eos = self._pad_eos(model, tokenizer)
        ids = [encode_with_bos(tokenizer, p) for p in prompts]
        if cut_prompt and self.max_length is not None:
            ids = [i[-self.max_length:] for i in ids]  # keep the end: that is what is being continued
        outs = continue_greedy(model, ids, max_new, pad_id=pad, eos_ids=eos, batch_size=self.batch_size)
        return [decode(tokenizer, o) for o in outs]

    def verbmem(self, model: Any, tokenizer: Any, rows: Sequence[Mapping[str, str]]) -> pd.DataFrame:
        rows = self._first(rows)
        prompts = [r["prompt"] for r in rows]
        refs = [truncate_reference(tokenizer, r["gt"], self.verbmem_max_new_tokens) for r in rows]
        gens = self._generate(model, tokenizer, prompts, self.verbmem_max_new_tokens, cut_prompt=True)
        return self._rouge_frame("verbmem_forget", prompts, refs, gens)

    def knowmem(self, model: Any, tokenizer: Any, split: str, rows: Sequence[Mapping[str, str]],
                icl: Sequence[Mapping[str, str]]) -> pd.DataFrame:
        rows = self._first(rows)
        shots = [(r["question"], r["answer"]) for r in icl]
        prompts = [knowmem_prompt(r["question"], shots) for r in rows]
        gens = [cut_answer(g) for g in
                self._generate(model, tokenizer, prompts, self.knowmem_max_new_tokens, cut_prompt=False)]
        frame = self._rouge_frame(split, [r["question"] for r in rows], [r["answer"] for r in rows], gens)
        return frame

    def _rouge_frame(self, split: str, prompts: list[str], refs: list[str], gens: list[str]) -> pd.DataFrame:
        n = len(prompts)
        return pd.DataFrame({
            "split": split, "idx": np.arange(n), "prompt": prompts, "reference": refs, "generation": gens,
            "rouge": rouge_l_f1(gens, refs), "rouge_recall": rouge_l_recall(gens, refs, use_stemmer=False),
            "min_k": np.nan, "nll": np.nan, "n_tokens": np.nan,
        }, columns=list(ITEM_COLUMNS))

    def min_k(self, model: Any, tokenizer: Any, split: str, texts: Sequence[str]) -> pd.DataFrame:
        texts = self._first(texts)
        pad, _ = self._pad_eos(model, tokenizer)
        ids = [self._cut(encode_with_bos(tokenizer, t)) for t in texts]
        lps = token_logprobs(model, ids, pad_id=pad, batch_size=self.batch_size)
        n = len(texts)
        return pd.DataFrame({
            "split": split, "idx": np.arange(n), "prompt": "", "reference": "", "generation": "",
            "rouge": np.nan, "rouge_recall": np.nan,
            "min_k": [min_k_score(lp, self.min_k_ratio) for lp in lps],
            "nll": [float(-lp.mean()) for lp in lps], "n_tokens": [float(lp.size + 1) for lp in lps],
        }, columns=list(ITEM_COLUMNS))

    def evaluate(self, model: Any, task: Task) -> pd.DataFrame:
        data: MuseData = task.eval_data["muse"]
        tok = task.tokenizer
        parts: list[tuple[str, Any]] = [
            ("verbmem_forget", lambda: self.verbmem(model, tok, data.verbmem)),
            ("knowmem_forget", lambda: self.knowmem(model, tok, "knowmem_forget", data.forget_qa,
                                                    data.forget_qa_icl)),
            ("knowmem_retain", lambda: self.knowmem(model, tok, "knowmem_retain", data.retain_qa,
                                                    data.retain_qa_icl)),
            ("privleak_forget", lambda: self.min_k(model, tok, "privleak_forget", data.privleak_forget)),
            ("privleak_holdout", lambda: self.min_k(model, tok, "privleak_holdout", data.privleak_holdout)),
        ]
        frames = []
        for split, run in parts:
            start = time.perf_counter()
            frames.append(run())
            log.info("muse eval %s: %d items in %.1fs", split, len(frames[-1]), time.perf_counter() - start)
        return pd.concat(frames, ignore_index=True)

    def summarise(self, items: pd.DataFrame, references: Mapping[str, pd.DataFrame]) -> dict[str, float]:
        """`summarise_muse` with AUC_retrain from the retrained model's items (else `auc_retrain`)."""
        ref = references.get("retain")
        auc_retrain = privleak_auc(ref) if ref is not None else self.auc_retrain
        return summarise_muse(items, auc_retrain)
