"""TOFU evaluation: a per-item table (NLLs, generations, per-item metrics) and a summary aggregated from it.

The split is deliberate. `TofuEvaluator.evaluate` does the expensive model work once and records, per item,
every quantity a TOFU number is built from; `summarise` turns that table into the summary. Because the summary
is a pure function of the table, saved tables can be re-aggregated later (a different reference model for
forget quality, a subset of items, a new table layout) without running a model again, and `evaluate` is
guaranteed to report exactly what `summarise` computes.

Per split (TOFU reference evaluation, locuslab/tofu `config/eval_everything.yaml` + `aggregate_eval_stat.py`,
with the definitions of docs/metrics.md#tofu):

| split        | data field   | prob                    | truth-ratio base   | TR aggregation      |
|--------------|--------------|-------------------------|--------------------|---------------------|
| forget       | forget       | mean exp(-NLL(answer))  | paraphrased_answer | mean min(TR, 1/TR)  |
| retain       | retain_eval  | mean exp(-NLL(answer))  | paraphrased_answer | mean max(0, 1 - TR) |
| real_authors | real_authors | mean normalised prob    | answer             | mean max(0, 1 - TR) |
| world_facts  | world_facts  | mean normalised prob    | answer             | mean max(0, 1 - TR) |

For real_authors and world_facts TOFU compares the answer itself (not a paraphrase) with the perturbed
options (`base_answer_key: answer`), so those rows need no `paraphrased_answer`, and their `nll_paraphrased`
column holds the answer's NLL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from unlearn.errors import ConfigError, DataError
from unlearn.evals import metrics
from unlearn.evals.base import EVALUATORS, Evaluator
from unlearn.evals.scoring import answer_nll, greedy_generate

if TYPE_CHECKING:
    from unlearn.benchmarks.base import Task
    from unlearn.data.format import QAFormatter

log = logging.getLogger(__name__)

# Output split name -> TofuData field. `retain` reports the retain_perturbed rows (retain_eval), not the
# retain loss's training rows.
SPLITS: dict[str, str] = {
    "forget": "forget",
    "retain": "retain_eval",
    "real_authors": "real_authors",
    "world_facts": "world_facts",
}
# The answer the perturbed answers are compared with in the truth ratio (TOFU `base_answer_key`).
TRUTH_RATIO_BASE: dict[str, str] = {
    "forget": "paraphrased_answer",
    "retain": "paraphrased_answer",
    "real_authors": "answer",
    "world_facts": "answer",
}
# Splits whose reported prob is the normalised one (share of probability against the perturbed options).
NORMALISED_PROB_SPLITS: frozenset[str] = frozenset({"real_authors", "world_facts"})

ITEM_COLUMNS: tuple[str, ...] = (
    "split",
    "idx",
    "question",
    "answer",
    "generation",
    "nll",  # mean token NLL of the answer
    "prob",  # exp(-nll)
    "prob_normalised",  # exp(-nll) / (exp(-nll) + sum_j exp(-nll_perturbed_j))
    "rouge",  # ROUGE-L recall of the greedy generation against the answer
    "truth_ratio",  # raw TR = exp(nll_paraphrased - nll_perturbed_mean)
    "nll_paraphrased",  # NLL of the truth-ratio base answer (see TRUTH_RATIO_BASE)
    "nll_perturbed_mean",
    "nll_perturbed",  # list[float], one NLL per perturbed answer
)


def summarise_tofu(items: pd.DataFrame, reference_forget_tr: ArrayLike | None = None,
                   splits: Sequence[str] = tuple(SPLITS)) -> dict[str, float]:
    """Recompute the TOFU summary from a per-item table alone.

    Reads only the per-item metric columns `split`, `idx`, `prob`, `prob_normalised`, `rouge` and
    `truth_ratio`, so a table saved as CSV re-aggregates as well as one kept in memory. Keys:
    `forget_quality` (only with `reference_forget_tr`: KS p-value of the forget split's raw TR against it),
    `forget_log_truth_ratio` (signed: mean log TR on the forget split) and, with `reference_forget_tr`,
    `forget_log_truth_ratio_retain` (the retain model's) and `forget_log_truth_ratio_gap` (ours minus the retain
    model's: > 0 over-forgetting, < 0 under-forgetting), `forget_truth_ratio`, `model_utility`, and per split
    `{split}_prob`, `{split}_rouge`, `{split}_truth_ratio` (the forget one being `forget_truth_ratio`).
    The `splits` given must all be present. With all four (the default) the summary has every key; with
    `splits=("forget",)` (the relearning attack's forget-only evaluation) it has the forget split's keys alone,
    with the values the full summary gives them: model utility needs the other three.
    """
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or "forget" not in splits:
        raise ValueError(f"summarise: splits must include forget and be among {', '.join(SPLITS)}; got {splits}")
    needed = {"split", "idx", "prob", "prob_normalised", "rouge", "truth_ratio"}
    missing_cols = sorted(needed - set(items.columns))
    if missing_cols:
        raise ValueError(f"summarise: items table lacks column(s) {', '.join(missing_cols)}")
    present = set(items["split"].unique())
    missing = [s for s in splits if s not in present]
    if missing:
        raise ValueError(f"summarise: items table has no rows for split(s) {', '.join(missing)}")

    per_split: dict[str, float] = {}
    forget_tr = np.empty(0)
    for split in (s for s in SPLITS if s in splits):
        sub = items[items["split"] == split].sort_values("idx")
        prob_col = "prob_normalised" if split in NORMALISED_PROB_SPLITS else "prob"
        per_split[f"{split}_prob"] = float(sub[prob_col].astype(float).mean())
        per_split[f"{split}_rouge"] = float(sub["rouge"].astype(float).mean())
        tr = sub["truth_ratio"].to_numpy(dtype=np.float64)
        if split == "forget":
            forget_tr = tr
            per_split["forget_truth_ratio"] = metrics.forget_truth_ratio(tr)
        else:
            per_split[f"{split}_truth_ratio"] = metrics.retain_truth_ratio(tr)

    summary: dict[str, float] = {}
    log_tr = metrics.mean_log_truth_ratio(forget_tr)
    if reference_forget_tr is not None:
        summary["forget_quality"] = metrics.forget_quality(forget_tr, reference_forget_tr)
        retain_log_tr = metrics.mean_log_truth_ratio(np.asarray(reference_forget_tr, dtype=np.float64))
        summary["forget_log_truth_ratio_retain"] = retain_log_tr
        summary["forget_log_truth_ratio_gap"] = log_tr - retain_log_tr
    summary["forget_log_truth_ratio"] = log_tr
    summary["forget_truth_ratio"] = per_split["forget_truth_ratio"]
    if len(splits) == len(SPLITS):
        summary["model_utility"] = metrics.model_utility(per_split)
    summary.update(per_split)
    return summary


def _check_rows(split: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Raise DataError naming split, row and key when a row lacks what the TOFU metrics need."""
    keys = ["question", "answer", "perturbed_answer"]
    if TRUTH_RATIO_BASE[split] != "answer":
        keys.append(TRUTH_RATIO_BASE[split])
    for i, row in enumerate(rows):
        for key in keys:
            if key not in row:
                raise DataError(f"TOFU {SPLITS[split]}[{i}]: missing key {key!r}")
        pert = row["perturbed_answer"]
        if isinstance(pert, str) or not isinstance(pert, Sequence) or len(pert) == 0:
            raise DataError(
                f"TOFU {SPLITS[split]}[{i}]: 'perturbed_answer' must be a non-empty list of strings"
            )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@EVALUATORS.register("tofu")
class TofuEvaluator(Evaluator):
    """Evaluates a model on the four TOFU splits; configured by `configs/eval/tofu.yaml`.

    Args:
        batch_size: items per forward pass / generate call. Results do not depend on it.
        max_new_tokens: greedy generation length limit (TOFU: 200).
        max_items_per_split: evaluate only the first N rows of each split (deterministic; the TOFU reference
            code uses the first 300). None means all rows.
        rouge_stemmer: Porter stemming in ROUGE-L (TOFU: on).
    """

    name = "tofu"
    version = 1
    data = "tofu"
    uses = ("retain",)
    headline = ("forget_quality", "forget_truth_ratio", "forget_log_truth_ratio_gap", "model_utility",
                "forget_rouge", "forget_prob", "retain_rouge", "retain_prob")

    def __init__(
        self,
        batch_size: int = 32,
        max_new_tokens: int = 200,
        max_items_per_split: int | None = None,
        rouge_stemmer: bool = True,
    ) -> None:
        if not _positive_int(batch_size):
            raise ConfigError(f"eval.tofu.batch_size: must be a positive integer, got {batch_size!r}")
        if not _positive_int(max_new_tokens):
            raise ConfigError(f"eval.tofu.max_new_tokens: must be a positive integer, got {max_new_tokens!r}")
        if max_items_per_split is not None and not _positive_int(max_items_per_split):
            raise ConfigError(
                f"eval.tofu.max_items_per_split: must be a positive integer or null, got {max_items_per_split!r}"
            )
        if not isinstance(rouge_stemmer, bool):
            raise ConfigError(f"eval.tofu.rouge_stemmer: must be true or false, got {rouge_stemmer!r}")
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_items_per_split = max_items_per_split
        self.rouge_stemmer = rouge_stemmer

    def settings(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "max_items_per_split": self.max_items_per_split,
                "rouge_stemmer": self.rouge_stemmer}

    def evaluate(self, model: Any, task: Task) -> pd.DataFrame:
        """Score every split: the per-item table (columns `ITEM_COLUMNS`)."""
        return self._evaluate(model, task, tuple(SPLITS))

    def evaluate_forget(self, model: Any, task: Task) -> pd.DataFrame:
        """The forget split alone (what the relearning attack re-measures)."""
        return self._evaluate(model, task, ("forget",))

    def _evaluate(self, model: Any, task: Task, splits: Sequence[str]) -> pd.DataFrame:
        data = task.eval_data["tofu"]
        if task.formatter is None:
            raise ConfigError(f"eval.tofu: benchmark {task.benchmark!r} has no prompt formatter")
        frames = []
        for split in splits:
            field = SPLITS[split]
            rows = list(getattr(data, field))
            if self.max_items_per_split is not None:
                rows = rows[: self.max_items_per_split]
            if not rows:
                raise DataError(f"TOFU {field}: no rows; all four TOFU splits are needed for the summary")
            start = time.perf_counter()
            frames.append(self.score_split(model, task.tokenizer, task.formatter, split, rows))
            log.info("tofu eval %s: %d items in %.1fs", split, len(rows), time.perf_counter() - start)
        return pd.concat(frames, ignore_index=True)

    def summarise(self, items: pd.DataFrame, references: Mapping[str, pd.DataFrame]) -> dict[str, float]:
        """`summarise_tofu`, with forget quality against the retain model's forget truth ratios when it exists.

        With `max_items_per_split`, the retain model was evaluated with the same setting (it is part of the
        cache key), so KS compares the same questions' distributions.
        """
        ref = references.get("retain")
        return summarise_tofu(items, None if ref is None else forget_truth_ratios(ref))

    def summarise_forget(self, items: pd.DataFrame, references: Mapping[str, pd.DataFrame]) -> dict[str, float]:
        """`summarise`'s forget-split keys from the forget split's items alone."""
        ref = references.get("retain")
        return summarise_tofu(items, None if ref is None else forget_truth_ratios(ref), splits=("forget",))

    def score_split(
        self,
        model: Any,
        tokenizer: Any,
        formatter: QAFormatter,
        split: str,
        rows: Sequence[Mapping[str, Any]],
    ) -> pd.DataFrame:
        """The per-item table of one split (columns `ITEM_COLUMNS`).

        All NLLs of the split (answers, base answers, every perturbed answer) go through one `answer_nll`
        call so that length-sorted batching packs them together.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown TOFU split {split!r}; known: {', '.join(SPLITS)}")
        _check_rows(split, rows)
        n = len(rows)
        questions = [str(r["question"]) for r in rows]
        answers = [str(r["answer"]) for r in rows]
        base_is_answer = TRUTH_RATIO_BASE[split] == "answer"
        perturbed = [[str(p) for p in r["perturbed_answer"]] for r in rows]

        q_all = list(questions)
        a_all = list(answers)
        if not base_is_answer:
            q_all += questions
            a_all += [str(r[TRUTH_RATIO_BASE[split]]) for r in rows]
        for q, perts in zip(questions, perturbed, strict=True):
            q_all += [q] * len(perts)
            a_all += perts
        nll_all = answer_nll(model, formatter, q_all, a_all, batch_size=self.batch_size)

        nll = nll_all[:n]
        offset = n
        if base_is_answer:
            nll_base = nll
        else:
            nll_base = nll_all[n : 2 * n]
            offset = 2 * n
        nll_pert: list[np.ndarray] = []
        for perts in perturbed:
            nll_pert.append(nll_all[offset : offset + len(perts)])
            offset += len(perts)

        generations = greedy_generate(
            model, tokenizer, formatter, questions, self.max_new_tokens, batch_size=self.batch_size
        )
        return pd.DataFrame(
            {
                "split": split,
                "idx": np.arange(n),
                "question": questions,
                "answer": answers,
                "generation": generations,
                "nll": nll,
                "prob": metrics.prob_from_nll(nll),
                "prob_normalised": metrics.normalised_prob(nll, nll_pert),
                "rouge": metrics.rouge_l_recall(generations, answers, use_stemmer=self.rouge_stemmer),
                "truth_ratio": metrics.truth_ratio(nll_base, nll_pert),
                "nll_paraphrased": nll_base,
                "nll_perturbed_mean": np.array([p.mean() for p in nll_pert]),
                "nll_perturbed": [p.tolist() for p in nll_pert],
            },
            columns=list(ITEM_COLUMNS),
        )


def forget_truth_ratios(items: pd.DataFrame) -> np.ndarray:
    """The raw per-question truth ratios of the forget split, in item order (forget quality's KS sample)."""
    sub = items[items["split"] == "forget"].sort_values("idx")
    return sub["truth_ratio"].to_numpy(dtype=np.float64)
