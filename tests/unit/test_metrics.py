"""Golden-value tests for unlearn.evals.metrics; every expected number is derived by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unlearn.evals import metrics as M

LN2, LN4, LN8 = math.log(2), math.log(4), math.log(8)


def test_prob_from_nll() -> None:
    # exp(-0) = 1, exp(-ln 2) = 1/2
    np.testing.assert_allclose(M.prob_from_nll([0.0, LN2]), [1.0, 0.5], rtol=1e-15)


def test_truth_ratio_raw_and_aggregations() -> None:
    para = [1.0, 2.0]
    pert = [[2.0, 4.0], [1.0, 1.0]]
    # item 0: mean pert NLL = (2+4)/2 = 3;  TR = exp(-3)/exp(-1) = exp(-2) = 0.1353352832366127
    # item 1: mean pert NLL = 1;            TR = exp(-1)/exp(-2) = exp(1)  = 2.718281828459045
    tr = M.truth_ratio(para, pert)
    np.testing.assert_allclose(tr, [0.1353352832366127, 2.718281828459045], rtol=1e-14)
    # forget: min(TR, 1/TR) = [e^-2, e^-1] = [0.1353352832366127, 0.3678794411714423];
    #         mean = 0.5032147244080550 / 2 = 0.2516073622040275
    assert M.forget_truth_ratio(tr) == pytest.approx(0.2516073622040275, rel=1e-12)
    # retain: max(0, 1-TR) = [1 - 0.1353352832, 0] = [0.8646647168, 0]; mean = 0.4323323584
    assert M.retain_truth_ratio(tr) == pytest.approx(0.43233235838169, rel=1e-12)


def test_mean_log_truth_ratio_is_signed() -> None:
    # TR = [e^-2, e^1] (the items above): log TR = [-2, 1], mean -0.5. The folded statistic is the same for
    # 1/TR = [e^2, e^-1], whose log mean is +0.5: only the sign tells the two apart.
    tr = M.truth_ratio([1.0, 2.0], [[2.0, 4.0], [1.0, 1.0]])
    assert M.mean_log_truth_ratio(tr) == pytest.approx(-0.5, rel=1e-12)
    assert M.mean_log_truth_ratio(1.0 / tr) == pytest.approx(0.5, rel=1e-12)
    assert M.forget_truth_ratio(1.0 / tr) == pytest.approx(M.forget_truth_ratio(tr), rel=1e-12)
    # A collapsed model (TR = inf) is reported as non-finite, never clipped into range.
    assert M.mean_log_truth_ratio([1.0, math.inf]) == math.inf
    with pytest.raises(ValueError, match="empty"):
        M.mean_log_truth_ratio([])


def test_truth_ratio_ragged_and_stable() -> None:
    # Ragged rows: item 0 has one perturbed answer (NLL 3), item 1 three (mean (1+2+3)/3 = 2).
    # TR_0 = exp(1 - 3) = e^-2;  TR_1 = exp(2 - 2) = 1.
    tr = M.truth_ratio([1.0, 2.0], [[3.0], [1.0, 2.0, 3.0]])
    np.testing.assert_allclose(tr, [math.exp(-2), 1.0], rtol=1e-14)
    # Large NLLs whose exp(-NLL) underflows to 0 in float64: log space gives TR = exp(800 - 801) = e^-1.
    np.testing.assert_allclose(M.truth_ratio([800.0], [[801.0]]), [math.exp(-1)], rtol=1e-12)


def test_truth_ratio_shape_errors() -> None:
    with pytest.raises(ValueError, match="expected 2"):
        M.truth_ratio([1.0, 2.0], [[1.0]])
    with pytest.raises(ValueError, match="empty"):
        M.truth_ratio([1.0], [[]])


def test_normalised_prob() -> None:
    # item 0: p_true = exp(-ln 2) = 1/2; perturbed p = 1/4, 1/8 -> 0.5 / (0.5 + 0.25 + 0.125) = 4/7
    # item 1: p_true = 1; perturbed p = 1/2, 1/4, 1/4 -> 1 / (1 + 1) = 1/2
    out = M.normalised_prob([LN2, 0.0], [[LN4, LN8], [LN2, LN4, LN4]])
    np.testing.assert_allclose(out, [4 / 7, 0.5], rtol=1e-14)
    # Underflow-safe: all probabilities ~exp(-1000) but equal -> 1/(1+3) = 1/4
    np.testing.assert_allclose(M.normalised_prob([1000.0], [[1000.0] * 3]), [0.25], rtol=1e-12)


def test_forget_quality_identical_samples() -> None:
    # Identical samples: KS statistic D = 0, so P(D >= 0) = 1.
    assert M.forget_quality([0.1, 0.5, 0.9], [0.1, 0.5, 0.9]) == pytest.approx(1.0)


def test_forget_quality_fully_separated() -> None:
    # n = m = 5, every x below every y: D = 1. Exact two-sided p = P(D >= 1) under H0 = share of the
    # C(10, 5) = 252 equally likely interleavings in which one sample entirely precedes the other: 2 of them.
    # p = 2/252 = 1/126 = 0.007936507936507936
    p = M.forget_quality([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert p == pytest.approx(1 / 126, rel=1e-12)


def test_forget_quality_partial_overlap() -> None:
    # x = [1, 2, 4], y = [3, 5, 6]: merged order x x y x y y; running |F_x - F_y| peaks at 2/3, so D = 2/3.
    # Under H0 all C(6, 3) = 20 orders are equally likely; D < 2/3 iff the walk (+1 for x, -1 for y) never
    # leaves [-1, 1], i.e. it is three pairs each "xy" or "yx": 2^3 = 8 orders. p = (20 - 8)/20 = 0.6
    assert M.forget_quality([1, 2, 4], [3, 5, 6]) == pytest.approx(0.6, rel=1e-12)


def test_rouge_l_recall_and_f1() -> None:
    # LCS("the cat sat on the mat", "the cat on mat") = "the cat on mat" = 4 tokens; reference has 6.
    # recall = 4/6; precision = 4/4; F1 = 2 * 1 * (2/3) / (1 + 2/3) = 0.8
    assert M.rouge_l_recall(["the cat on mat"], ["the cat sat on the mat"]) == [pytest.approx(4 / 6)]
    assert M.rouge_l_f1(["the cat on mat"], ["the cat sat on the mat"]) == [pytest.approx(0.8)]
    # Stemming: "cats"->"cat", "running"->"run": LCS(the cat are run, the cat is run) = 3 of 4 tokens = 0.75;
    # without stemming only "the" matches: 1/4.
    assert M.rouge_l_recall(["the cat is run"], ["the cats are running"]) == [pytest.approx(0.75)]
    assert M.rouge_l_recall(["the cat is run"], ["the cats are running"], use_stemmer=False) == [
        pytest.approx(0.25)
    ]
    # Empty generation scores 0; lengths must match.
    assert M.rouge_l_recall([""], ["anything"]) == [0.0]
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        M.rouge_l_recall(["a", "b"], ["a"])


def _utility_values(**overrides: float) -> dict[str, float]:
    values = {k: 0.5 for k in M.MODEL_UTILITY_KEYS}
    values.update(overrides)
    return values


def test_model_utility_hmean_by_hand() -> None:
    # Six values 1/2 and three values 1: hmean = 9 / (6 * 2 + 3 * 1) = 9/15 = 0.6
    vals = _utility_values(retain_prob=1.0, real_authors_rouge=1.0, world_facts_truth_ratio=1.0)
    vals["unrelated_key"] = 123.0  # ignored
    assert M.model_utility(vals) == pytest.approx(0.6, rel=1e-14)


def test_model_utility_zero_and_missing() -> None:
    # A zero anywhere makes the harmonic mean 0.
    assert M.model_utility(_utility_values(world_facts_rouge=0.0)) == 0.0
    vals = _utility_values()
    del vals["real_authors_truth_ratio"]
    with pytest.raises(ValueError, match="real_authors_truth_ratio"):
        M.model_utility(vals)
    with pytest.raises(ValueError, match="retain_prob"):
        M.model_utility(_utility_values(retain_prob=float("nan")))
