"""The relearning attack: config validation, and on the micro world it brings forgotten answers back."""

from __future__ import annotations

import pytest
import torch

from unlearn.benchmarks.base import Task
from unlearn.errors import ConfigError
from unlearn.evals.relearn import RelearnConfig, prefixed, relearn
from unlearn.models.build import load_model


def test_config_validation() -> None:
    assert not RelearnConfig.from_config(None).enabled
    assert RelearnConfig.from_config({"steps": 3, "lr": 1e-3}).enabled
    assert RelearnConfig.from_config(None).scope == "forget"
    assert RelearnConfig.from_config({"scope": "all"}).scope == "all"
    for bad, key in (({"steps": -1}, "relearn.steps"), ({"steps": 1.5}, "relearn.steps"),
                     ({"lr": 0}, "relearn.lr"), ({"fraction": 0}, "relearn.fraction"),
                     ({"fraction": 1.5}, "relearn.fraction"), ({"batch_size": 0}, "relearn.batch_size"),
                     ({"stepz": 1}, "relearn.stepz"), ({"scope": "retain"}, "relearn.scope")):
        with pytest.raises(ConfigError, match=key):
            RelearnConfig.from_config(bad)
    assert prefixed({"forget_prob": 0.5}) == {"relearn_forget_prob": 0.5}


def _forget_nll(model: torch.nn.Module, task: Task) -> float:
    with torch.no_grad():
        return float(model(**task.collate(list(task.forget))).loss)


def test_relearning_brings_the_forget_set_back(micro_prepared: Task) -> None:
    task = micro_prepared
    torch.manual_seed(0)
    model = load_model(task.models["target"])
    before = _forget_nll(model, task)
    # Unlearn by gradient ascent on the whole forget set until its NLL has risen by 3 nats.
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(200):
        loss = model(**task.collate(list(task.forget))).loss
        if float(loss.detach()) > before + 3:
            break
        opt.zero_grad()
        (-loss).backward()
        opt.step()
    unlearned = _forget_nll(model, task)
    assert unlearned > before + 3
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    attacked = relearn(model, task.forget, task.collate, RelearnConfig(steps=10, lr=1e-3, fraction=0.5))
    relearned = _forget_nll(attacked, task)
    # Fine-tuning on half the forget set for 10 steps recovers more than half of the NLL lost on all of it.
    assert relearned < unlearned - 0.5 * (unlearned - before), (before, unlearned, relearned)
    for key, value in model.state_dict().items():  # the unlearned model itself is untouched
        assert torch.equal(value, weights[key]), key
