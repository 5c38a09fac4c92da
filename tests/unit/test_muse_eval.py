"""The MUSE evaluator: summary from items by hand, ground-truth truncation, settings, and batch-independent items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.tiny_lm import make_model
from tests.unit.test_scoring import make_tokenizer
from unlearn.benchmarks.base import Task
from unlearn.benchmarks.muse.data import MuseData
from unlearn.benchmarks.muse.evaluator import (
    ITEM_COLUMNS,
    SPLITS,
    MuseEvaluator,
    encode_with_bos,
    summarise_muse,
    truncate_reference,
)
from unlearn.errors import ConfigError


def _items(rows: dict[str, list[float]]) -> pd.DataFrame:
    out = []
    for split, values in rows.items():
        col = "min_k" if split.startswith("privleak") else "rouge"
        for i, v in enumerate(values):
            out.append({"split": split, "idx": i, "rouge": np.nan, "min_k": np.nan, col: v})
    return pd.DataFrame(out)


MODEL = _items({"verbmem_forget": [1.0, 0.5], "knowmem_forget": [0.2, 0.4], "knowmem_retain": [1.0],
                "privleak_forget": [1.0, 2.0], "privleak_holdout": [2.0, 3.0]})
# The retrained model: holdout pairs (0.5 vs 1, 2) ranked above, (3 vs 1, 2) not -> AUC 2/4.
RETRAIN = _items({"verbmem_forget": [0.0, 0.0], "knowmem_forget": [0.0, 0.0], "knowmem_retain": [1.0],
                  "privleak_forget": [1.0, 2.0], "privleak_holdout": [0.5, 3.0]})


def test_summary_by_hand() -> None:
    out = summarise_muse(MODEL, auc_retrain=0.5)
    assert out["verbmem_f"] == pytest.approx(75.0)
    assert out["knowmem_f"] == pytest.approx(30.0)
    assert out["knowmem_r"] == pytest.approx(100.0)
    assert out["privleak_auc"] == pytest.approx(0.125)  # see test_membership_auc_with_ties
    assert out["privleak"] == pytest.approx(-75.0)
    assert "privleak" not in summarise_muse(MODEL)


def test_evaluator_takes_auc_retrain_from_the_retrained_items() -> None:
    ev = MuseEvaluator(auc_retrain=0.9)
    assert ev.summarise(MODEL, {"retain": RETRAIN})["privleak"] == pytest.approx(-75.0)  # items win over the number
    assert ev.summarise(MODEL, {})["privleak"] == pytest.approx((0.125 - 0.9) / 0.9 * 100)
    assert "privleak" not in MuseEvaluator().summarise(MODEL, {})
    assert MuseEvaluator().summarise(RETRAIN, {"retain": RETRAIN})["privleak"] == 0.0


def test_summary_needs_every_split() -> None:
    with pytest.raises(ValueError, match="knowmem_retain"):
        summarise_muse(MODEL[MODEL["split"] != "knowmem_retain"])


@pytest.mark.parametrize(("key", "value"), [("batch_size", 0), ("verbmem_max_new_tokens", -1), ("max_items", 0),
                                            ("min_k_ratio", 1.5), ("auc_retrain", 0.0), ("max_length", True)])
def test_bad_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"eval\.muse\.{key}"):
        MuseEvaluator(**{key: value})


def test_reference_truncation_counts_bos() -> None:
    tok = make_tokenizer()
    text = "the cat sat on the mat. a dog ran to the park."
    ids = encode_with_bos(tok, text)
    assert ids[0] == tok.bos_token_id and ids[1:] == tok(text, add_special_tokens=False)["input_ids"]
    cut = truncate_reference(tok, text, 4)  # bos + 3 tokens
    assert cut == tok.decode(ids[1:4], skip_special_tokens=True)
    assert len(tok(cut, add_special_tokens=False)["input_ids"]) <= 3


def _task(tok: object) -> Task:
    data = MuseData(
        name="t", forget_text=["the cat sat"], retain_text=["a dog ran"],
        verbmem=[{"prompt": "the cat", "gt": " sat on the mat."}, {"prompt": "a dog ran to", "gt": " the park."},
                 {"prompt": "Question:", "gt": " Where was the author born?"}],
        forget_qa=[{"question": "Where was the author born?", "answer": "Paris"},
                   {"question": "Who?", "answer": "His father"}],
        forget_qa_icl=[{"question": "What does she write?", "answer": "crime novels"}],
        retain_qa=[{"question": "What is the cat doing?", "answer": "the cat sat on the mat"}],
        retain_qa_icl=[],
        privleak_forget=["the cat sat on the mat.", "a dog ran to the park."],
        privleak_holdout=["His father is a baker from Rome.", "She writes crime novels and short stories.", "Who"],
    )
    return Task(benchmark="muse_test", tag="t", tokenizer=tok, forget=[], retain=[], collate=lambda b: {},
                models={"target": "x"}, eval_data={"muse": data})


def test_items_do_not_depend_on_batch_size() -> None:
    tok = make_tokenizer()
    model = make_model(tok)
    task = _task(tok)
    one = MuseEvaluator(batch_size=1, verbmem_max_new_tokens=8, knowmem_max_new_tokens=6).evaluate(model, task)
    many = MuseEvaluator(batch_size=8, verbmem_max_new_tokens=8, knowmem_max_new_tokens=6).evaluate(model, task)
    assert list(one.columns) == list(ITEM_COLUMNS)
    assert one["split"].value_counts().to_dict() == {"verbmem_forget": 3, "knowmem_forget": 2, "knowmem_retain": 1,
                                                     "privleak_forget": 2, "privleak_holdout": 3}
    assert set(one["split"]) == set(SPLITS)
    assert one["generation"].tolist() == many["generation"].tolist()
    np.testing.assert_allclose(one["min_k"].to_numpy(float), many["min_k"].to_numpy(float), rtol=0, atol=1e-5)
    summary = MuseEvaluator().summarise(one, {})
    assert 0.0 <= summary["verbmem_f"] <= 100.0 and 0.0 <= summary["privleak_auc"] <= 1.0
    # max_items keeps the first N of every split.
    few = MuseEvaluator(max_items=1, verbmem_max_new_tokens=4, knowmem_max_new_tokens=4).evaluate(model, task)
    assert few["split"].value_counts().to_dict() == dict.fromkeys(SPLITS, 1)
