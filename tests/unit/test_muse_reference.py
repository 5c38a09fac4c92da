"""This project's MUSE metrics reproduce MUSE's own per-item records (jaechan-repo/muse_bench outputs).

The records live outside the repository (`<repo>/../shared/muse-reference`, see its README); the test skips when
they are absent. ROUGE must match MUSE's value for every record exactly; AUCs match MUSE's recorded ones to float
rounding, and PrivLeak reproduces the numbers MUSE reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unlearn.evals.muse_metrics import cut_answer, membership_auc, privleak, rouge_l_f1

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "muse-reference"
pytestmark = pytest.mark.skipif(not (REFERENCE / "manifest.json").is_file(),
                                reason=f"MUSE reference records not found at {REFERENCE}")


def _manifest() -> dict:
    return json.loads((REFERENCE / "manifest.json").read_text())


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in (REFERENCE / name).read_text().splitlines() if line.strip()]


def test_rouge_l_matches_every_record() -> None:
    entries = _manifest()["rouge"]
    assert entries
    for entry in entries:
        rows = _records(entry["file"])
        assert len(rows) == entry["n"]
        ours = rouge_l_f1([r["response"] for r in rows], [r["gt"] for r in rows])
        for i, (row, value) in enumerate(zip(rows, ours, strict=True)):
            assert value == row["rougeL"], f"{entry['file']}[{i}]: {value} != MUSE {row['rougeL']}"
            assert cut_answer(row["response"]) == row["response"], "MUSE's saved answers are already cut"
        recorded = entry["recorded_out_json"]["mean_rougeL"]
        assert float(np.mean(ours)) == pytest.approx(recorded, rel=1e-12)


def _aucs(name: str) -> dict[str, float]:
    rows = _records(name)
    by_split = {s: [r["Min-40%"] for r in rows if r["split"] == s] for s in ("forget", "retain2", "holdout")}
    return {"forget_holdout": membership_auc(by_split["forget"], by_split["holdout"]),
            "forget_retain2": membership_auc(by_split["forget"], by_split["retain2"])}


def test_membership_auc_matches_recorded() -> None:
    for entry in _manifest()["privleak"]:
        ours = _aucs(entry["file"])
        for pair, value in ours.items():
            recorded = entry["recorded_auc_json"][pair]["Min-40%"]
            assert value == pytest.approx(recorded, abs=1e-12), f"{entry['file']} {pair}"


def test_privleak_reproduces_muse_numbers() -> None:
    auc_retrain = _aucs("privleak_bbc_retrain.jsonl")["forget_holdout"]
    assert auc_retrain == pytest.approx(0.4772, abs=1e-12)
    assert _aucs("privleak_hp_retrain.jsonl")["forget_holdout"] == pytest.approx(0.5393, abs=1e-12)
    # The target model still separates forget from holdout (PrivLeak near -100); the NPO+GDR model over-unlearns.
    assert round(privleak(_aucs("privleak_bbc_target.jsonl")["forget_holdout"], auc_retrain), 1) == -99.8
    assert round(privleak(_aucs("privleak_bbc_npo_gdr-step1020.jsonl")["forget_holdout"], auc_retrain), 1) == 105.8
