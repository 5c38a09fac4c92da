"""The lm-eval stage on a micro model with a custom task: accuracy equals the hand computation from the same
log-likelihoods, which equal the model's own; bad task names fail with one line naming the key."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from tests.tiny_lm import make_model
from unlearn.data.tokenizer import train_tokenizer
from unlearn.errors import ConfigError
from unlearn.evals import build_evaluators

ROWS = [{"stem": f"The colour of item {i} is", "choices": ["red", "green", "blue", "amber"], "answer": i % 4}
        for i in range(8)]


def custom_task(tmp_path) -> dict:
    path = tmp_path / "mcq.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return {"task": "micro_mcq", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{stem}}",
            "doc_to_choice": "{{choices}}", "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}


def hand_loglik(model, tok, context: str, continuation: str) -> float:
    """Sum of the continuation tokens' log-probabilities after the context (whole string encoded, as lm-eval)."""
    ctx = tok.encode(context, add_special_tokens=False)
    whole = tok.encode(context + continuation, add_special_tokens=False)
    assert whole[: len(ctx)] == ctx
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), dim=-1)
    return float(sum(logp[t - 1, whole[t]] for t in range(len(ctx), len(whole))))


def test_lm_eval_on_a_custom_task_matches_the_hand_computation(tmp_path) -> None:
    texts = [r["stem"] + " " + c for r in ROWS for c in r["choices"]]
    tok = train_tokenizer(texts, 300)
    model = make_model(tok)
    (ev,) = build_evaluators({"lm_eval": {"tasks": ["micro_mcq"], "batch_size": 3}})
    task = SimpleNamespace(eval_data={"lm_eval": {"micro_mcq": custom_task(tmp_path)}}, tokenizer=tok,
                           benchmark="micro")
    ev.check(task)
    items = ev.evaluate(model, task)
    assert len(items) == len(ROWS) and set(items["task"]) == {"micro_mcq"}
    for row in items.itertuples():
        src = ROWS[row.doc_id]
        assert row.target == src["answer"]
        want = [hand_loglik(model, tok, src["stem"], " " + c) for c in src["choices"]]
        assert row.loglik == pytest.approx(want, rel=1e-4, abs=1e-4)  # float32 forward, batched vs one by one
        assert row.acc == float(max(range(4), key=lambda j: want[j]) == src["answer"])
    summary = ev.summarise(items, {})
    acc = items["acc"].to_numpy()
    assert summary["micro_mcq_acc"] == pytest.approx(acc.mean())
    assert summary["micro_mcq_acc_stderr"] == pytest.approx(acc.std(ddof=1) / math.sqrt(len(acc)))


def test_summary_golden_values() -> None:
    (ev,) = build_evaluators({"lm_eval": {"tasks": ["a", "b"]}})
    items = pd.DataFrame({"task": ["a"] * 4 + ["b"] * 2, "acc": [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]})
    out = ev.summarise(items, {})
    # a: mean 0.75, sd (ddof 1) = 0.5, stderr 0.5 / 2 = 0.25. b: 0 and 0.
    assert out == {"a_acc": 0.75, "a_acc_stderr": 0.25, "b_acc": 0.0, "b_acc_stderr": 0.0}


def test_bad_settings_and_unknown_task_names_fail_naming_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"eval\.lm_eval\.tasks"):
        build_evaluators({"lm_eval": {"tasks": []}})
    with pytest.raises(ConfigError, match=r"eval\.lm_eval\.batch_size"):
        build_evaluators({"lm_eval": {"tasks": ["x"], "batch_size": 0}})
    # Without lm-eval's built-in index (minutes on a busy CPU): the name is checked against the shipped tasks.
    (ev,) = build_evaluators({"lm_eval": {"tasks": ["micro_mcq", "no_such_task_xyz"], "include_defaults": False}})
    task = SimpleNamespace(eval_data={"lm_eval": {"micro_mcq": custom_task(tmp_path)}}, tokenizer=None,
                           benchmark="micro")
    with pytest.raises(ConfigError, match=r"eval\.lm_eval\.tasks: unknown lm-eval task\(s\) \['no_such_task_xyz'\]"):
        ev.check(task)
