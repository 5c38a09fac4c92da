"""MUSE metrics against hand-computed values (docs/metrics.md#muse)."""

from __future__ import annotations

import math

import pytest

from unlearn.evals.muse_metrics import (
    cut_answer,
    knowmem_prompt,
    membership_auc,
    min_k_score,
    privleak,
    rouge_l_f1,
)


def test_cut_answer_stops_at_each_marker() -> None:
    assert cut_answer("Paris\n\nQuestion: what?") == "Paris"
    assert cut_answer("Paris\nQuestion: what?") == "Paris"
    assert cut_answer("Paris Question: what?") == "Paris "
    assert cut_answer("Paris\nand more") == "Paris\nand more"  # one newline is not a stop
    assert cut_answer("") == ""


def test_knowmem_prompt_layout() -> None:
    prompt = knowmem_prompt("Q2?", [("Q1?", "A1")])
    assert prompt == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: "
    assert knowmem_prompt("Q?") == "Question: Q?\nAnswer: "


def test_rouge_l_f1_hand_values() -> None:
    # LCS("the cat sat on the mat", "the cat lay on a mat") = the cat on mat = 4 of 6 and 6 tokens: F1 = 2/3.
    assert rouge_l_f1(["the cat lay on a mat"], ["the cat sat on the mat"]) == [pytest.approx(2 / 3, abs=1e-12)]
    # rouge_score lower-cases and splits on non-alphanumerics: case and punctuation do not count.
    assert rouge_l_f1(["The CAT, sat!"], ["the cat sat"]) == [1.0]
    assert rouge_l_f1(["19"], ["19%"]) == [1.0]
    # Precision matters for F1 (unlike TOFU's recall): 2 of 4 predicted tokens match a 2-token reference.
    assert rouge_l_f1(["red blue green yellow"], ["red blue"]) == [pytest.approx(2 / 3, abs=1e-12)]
    # No stemming in MUSE: "running" and "run" differ.
    assert rouge_l_f1(["running"], ["run"]) == [0.0]
    assert rouge_l_f1([""], ["anything"]) == [0.0]


def test_min_k_score_hand_values() -> None:
    lp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert min_k_score(lp, 0.4) == pytest.approx(4.5)  # k = floor(5 * 0.4) = 2: mean of -5, -4, negated
    assert min_k_score(lp, 1.0) == pytest.approx(3.0)
    assert min_k_score(lp, 0.1) == pytest.approx(5.0)  # floor(0.5) = 0 -> the single lowest
    assert min_k_score([-0.25] * 10) == pytest.approx(0.25)  # order and ties do not matter
    with pytest.raises(ValueError):
        min_k_score([])


def test_membership_auc_with_ties() -> None:
    # Score -s; holdout (label 1) ranked above forget when its score is lower. Pairs (holdout, forget):
    # (2,1) no, (2,2) tie = 1/2, (3,1) no, (3,2) no -> AUC = 0.5 / 4.
    assert membership_auc([1.0, 2.0], [2.0, 3.0]) == pytest.approx(0.125, abs=1e-12)
    # Memorised forget texts (low scores) -> AUC 0; swapped -> 1; all tied -> 1/2.
    assert membership_auc([0.1, 0.2], [1.0, 2.0]) == pytest.approx(0.0, abs=1e-12)
    assert membership_auc([1.0, 2.0], [0.1, 0.2]) == pytest.approx(1.0, abs=1e-12)
    assert membership_auc([1.0, 1.0], [1.0]) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError):
        membership_auc([], [1.0])
    with pytest.raises(ValueError):
        membership_auc([math.nan], [1.0])


def test_privleak_sign_and_scale() -> None:
    assert privleak(0.25, 0.5) == pytest.approx(-50.0)  # still tells forget from holdout: under-unlearned
    assert privleak(0.75, 0.5) == pytest.approx(50.0)  # over-unlearned
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(0.0, 0.4772) == pytest.approx(-100.0)
    with pytest.raises(ValueError):
        privleak(0.5, 0.0)
