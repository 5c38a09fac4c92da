"""MUSE's metrics as pure functions: answer cutting, ROUGE-L F1, Min-K% Prob, membership AUC and PrivLeak.

Everything here works on numbers and strings already computed from a model (generated text, per-token
log-probabilities), so each function is checked against hand arithmetic, and MUSE tables re-aggregate from saved
per-item files. Definitions and the lines of MUSE's reference code they follow are in docs/metrics.md#muse:

- VerbMem / KnowMem: ROUGE-L F1 (`rouge_score`, no stemming) of the model's continuation against the ground truth,
  averaged over items; KnowMem's answer is first cut before `"\\n\\n"`, `"\\nQuestion"` or `"Question:"`.
- PrivLeak: the Min-K% Prob membership score of each text (k = 40%), the AUC of forget (label 0) against holdout
  (label 1) texts scored `-score`, then `(AUC - AUC_retrain) / AUC_retrain * 100`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import auc, roc_curve

from unlearn.evals.metrics import rouge_l_f1

#: MUSE's KnowMem stop strings (knowmem/get_rouge_qa.py: the answer is the text before the first of these).
ANSWER_STOPS: tuple[str, ...] = ("\n\n", "\nQuestion", "Question:")
#: PrivLeak's Min-K% ratio (MUSE reports Min-40%).
PRIVLEAK_RATIO = 0.4

__all__ = ["ANSWER_STOPS", "PRIVLEAK_RATIO", "cut_answer", "knowmem_prompt", "membership_auc", "min_k_score",
           "privleak", "rouge_l_f1"]


def cut_answer(text: str, stops: Sequence[str] = ANSWER_STOPS) -> str:
    """The generated answer before the first stop string, as MUSE cuts it (each stop in turn, nothing else).

    A few-shot QA prompt makes a model go on with the next "Question: ..." block; only what precedes it is the
    answer. No stripping or other normalisation: ROUGE's tokenizer ignores whitespace and punctuation anyway.
    """
    for stop in stops:
        text = text.split(stop)[0]
    return text


def knowmem_prompt(question: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """MUSE's few-shot KnowMem prompt: `"Question: {q}\\nAnswer: {a}\\n\\n"` per shot, then the question."""
    head = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
    return f"{head}Question: {question}\nAnswer: "


def min_k_score(logprobs: ArrayLike, ratio: float = PRIVLEAK_RATIO) -> float:
    """Min-K% Prob (Shi et al., 2024) as MUSE computes it: minus the mean of the k smallest token log-probs.

    `logprobs` are the log-probabilities of a text's tokens 1..T-1 given their prefixes (the first token, bos, is
    never a target). k = floor(n * ratio), as MUSE; for a text so short that this is 0 the single lowest
    log-prob is used (MUSE's texts are long enough never to reach this case, where its mean would be NaN).
    A higher score means the text's hardest tokens are less likely: evidence that the model did not see it.
    """
    lp = np.asarray(logprobs, dtype=np.float64).reshape(-1)
    if lp.size == 0:
        raise ValueError("min_k_score: a text needs at least one scored token (two tokens with bos)")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"min_k_score: ratio must be in (0, 1], got {ratio}")
    k = max(1, int(lp.size * ratio))
    return float(-np.mean(np.sort(lp)[:k]))


def membership_auc(forget_scores: ArrayLike, holdout_scores: ArrayLike) -> float:
    """AUC of telling holdout from forget texts by `-score`, exactly MUSE's `roc_curve(y, -ppl)` then `auc`.

    Labels: forget 0, holdout 1. A model that memorised the forget texts gives them low scores (high `-score`),
    so its AUC is near 0; a model that never saw either set gives ~0.5. Ties count half (trapezoidal rule).
    """
    f = np.asarray(forget_scores, dtype=np.float64).reshape(-1)
    h = np.asarray(holdout_scores, dtype=np.float64).reshape(-1)
    if f.size == 0 or h.size == 0:
        raise ValueError("membership_auc: needs at least one forget and one holdout score")
    if not (np.isfinite(f).all() and np.isfinite(h).all()):
        raise ValueError("membership_auc: scores must be finite")
    labels = np.concatenate([np.zeros(f.size), np.ones(h.size)])
    fpr, tpr, _ = roc_curve(labels, -np.concatenate([f, h]))
    return float(auc(fpr, tpr))


def privleak(auc_model: float, auc_retrain: float) -> float:
    """PrivLeak = (AUC - AUC_retrain) / AUC_retrain * 100 (MUSE, Shi et al. 2024, Sec. 3).

    0 is ideal (as private as a model never trained on the forget set); strongly negative means the model still
    tells forget texts from holdout ones (under-unlearning: the target model is near -100), positive means it now
    treats forget texts as *less* familiar than unseen ones (over-unlearning, itself a leak).
    """
    if not np.isfinite(auc_retrain) or auc_retrain <= 0:
        raise ValueError(f"privleak: the retrained model's AUC must be positive, got {auc_retrain}")
    return float((auc_model - auc_retrain) / auc_retrain * 100.0)
