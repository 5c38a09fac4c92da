"""The lm-evaluation-harness stage (`eval=lm_eval`): multiple-choice accuracy of the in-memory model.

WMDP is scored by lm-evaluation-harness (`wmdp_bio`, `wmdp_cyber`, `mmlu`, zero-shot `acc`; docs/metrics.md#lm-eval).
This evaluator runs `lm_eval.simple_evaluate` on the model being unlearned, wrapped as `HFLM(pretrained=model,
tokenizer=...)`: nothing is saved and reloaded. It works on any benchmark (MMLU after TOFU unlearning:
`eval=[tofu,lm_eval]`).

Tasks come from two places:
- a benchmark may ship its own tasks (`Task.eval_data["lm_eval"]`: task name -> lm-eval task config; the embedded
  `wmdp_mini` writes its questions as JSONL in the cache and builds the configs from the task YAML in
  `unlearn/benchmarks/wmdp/tasks/`); these are used as they are, offline;
- any other name is looked up in lm-eval's task index (built-in tasks, plus `include_path` directories of task YAML).

`evaluate` returns one row per question (the configured task it belongs to, the lm-eval subtask, the gold index, the
log-likelihood of every choice, correct or not); `summarise` is a pure function of those rows: accuracy per
configured task as the mean over all its questions (for a group such as `mmlu` that is lm-eval's size-weighted group
accuracy) and its standard error `sd/sqrt(n)` (`ddof=1`, lm-eval's `mean_stderr`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from unlearn.errors import ConfigError
from unlearn.evals.base import EVALUATORS, Evaluator

if TYPE_CHECKING:
    from unlearn.benchmarks.base import Task

KEY = "eval.lm_eval"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _leaves(name: str, groups: Mapping[str, Sequence[str]], samples: Mapping[str, Any]) -> list[str]:
    """The leaf tasks (those with samples) a configured name stands for, following lm-eval's group tree."""
    if name in samples:
        return [name]
    out: list[str] = []
    for sub in groups.get(name, ()):
        out += _leaves(sub, groups, samples)
    return out


@EVALUATORS.register("lm_eval")
class LMEvalHarness(Evaluator):
    """lm-evaluation-harness multiple-choice accuracy; configured by `configs/eval/lm_eval.yaml`.

    Args:
        tasks: task or group names (`[wmdp_bio, wmdp_cyber, mmlu]`; a benchmark's own tasks by their names).
        batch_size: requests per forward pass (results do not depend on it beyond float rounding).
        num_fewshot: few-shot examples (WMDP's evaluation: 0).
        limit: first N questions of each task (null: all).
        include_path: extra directories of task YAML for lm-eval's index.
        include_defaults: index lm-eval's built-in tasks too (seconds to minutes on a busy CPU; only done when a
            configured name is not one the benchmark ships).
        max_length: context length HFLM truncates to (null: the model's).
    """

    name = "lm_eval"
    version = 1

    def __init__(self, tasks: Sequence[str] = ("wmdp_bio", "wmdp_cyber", "mmlu"), batch_size: int = 32,
                 num_fewshot: int = 0, limit: int | None = None, include_path: str | Sequence[str] | None = None,
                 max_length: int | None = None, include_defaults: bool = True) -> None:
        if isinstance(tasks, str):
            tasks = [tasks]
        if not isinstance(tasks, Sequence) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ConfigError(f"{KEY}.tasks: expected a non-empty list of task names, got {tasks!r}")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"{KEY}.tasks: a task is listed twice in {list(tasks)}")
        if not _positive_int(batch_size):
            raise ConfigError(f"{KEY}.batch_size: must be a positive integer, got {batch_size!r}")
        if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
            raise ConfigError(f"{KEY}.num_fewshot: must be an integer >= 0, got {num_fewshot!r}")
        if limit is not None and not _positive_int(limit):
            raise ConfigError(f"{KEY}.limit: must be a positive integer or null, got {limit!r}")
        if max_length is not None and not _positive_int(max_length):
            raise ConfigError(f"{KEY}.max_length: must be a positive integer or null, got {max_length!r}")
        if not isinstance(include_defaults, bool):
            raise ConfigError(f"{KEY}.include_defaults: expected true/false, got {include_defaults!r}")
        if isinstance(include_path, str):
            include_path = [include_path]
        self.tasks = list(tasks)
        self.batch_size, self.num_fewshot, self.limit, self.max_length = batch_size, num_fewshot, limit, max_length
        self.include_path = None if include_path is None else [str(p) for p in include_path]
        self.include_defaults = include_defaults
        self.headline = tuple(f"{t}_acc" for t in self.tasks)
        self._managers: dict[tuple[str, ...], Any] = {}

    def settings(self) -> dict[str, Any]:
        import lm_eval

        return {"tasks": self.tasks, "num_fewshot": self.num_fewshot, "limit": self.limit,
                "include_path": self.include_path, "max_length": self.max_length,
                "lm_eval": getattr(lm_eval, "__version__", "?")}

    # -- tasks -------------------------------------------------------------------------------------------------
    def _specs(self, task: Task | None) -> tuple[list[str | dict[str, Any]], Any]:
        """lm-eval task specs (the benchmark's configs by name, else the name) and the TaskManager to resolve them;
        an unknown name is a ConfigError naming `eval.lm_eval.tasks`."""
        from lm_eval.tasks import TaskManager

        shipped = dict((task.eval_data.get("lm_eval") or {}) if task is not None else {})
        others = [t for t in self.tasks if t not in shipped]
        # Indexing lm-eval's built-in tasks takes seconds; skip it when the benchmark ships every task. One index
        # per set of shipped names serves check() and every later evaluate().
        key = tuple(sorted(shipped))
        if key not in self._managers:
            self._managers[key] = TaskManager(include_path=self.include_path,
                                              include_defaults=self.include_defaults and bool(others))
        manager = self._managers[key]
        if others:
            known = set(manager.all_tasks)
            unknown = [t for t in others if t not in known]
            if unknown:
                local = f"; this benchmark provides: {', '.join(sorted(shipped))}" if shipped else ""
                raise ConfigError(f"{KEY}.tasks: unknown lm-eval task(s) {unknown}{local}")
        return [dict(shipped[t]) if t in shipped else t for t in self.tasks], manager

    def check(self, task: Task) -> None:
        self._specs(task)

    # -- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self, model: Any, task: Task) -> pd.DataFrame:
        import torch
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        specs, manager = self._specs(task)
        model = getattr(model, "module", model)
        was_training = model.training
        device = next(model.parameters()).device
        kwargs = {} if self.max_length is None else {"max_length": self.max_length}
        lm = HFLM(pretrained=model, tokenizer=task.tokenizer, batch_size=self.batch_size, device=str(device), **kwargs)
        try:
            with torch.no_grad():
                results = simple_evaluate(model=lm, tasks=specs, task_manager=manager, num_fewshot=self.num_fewshot,
                                          limit=self.limit, log_samples=True, bootstrap_iters=0, random_seed=0,
                                          numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234)
        finally:
            model.train(was_training)
        return self.items_from_results(results)

    def items_from_results(self, results: Mapping[str, Any]) -> pd.DataFrame:
        """Per-question rows from `simple_evaluate`'s output (`log_samples=True`)."""
        samples = results.get("samples") or {}
        groups = results.get("group_subtasks") or {}
        rows = []
        for name in self.tasks:
            leaves = _leaves(name, groups, samples)
            if not leaves:
                raise RuntimeError(f"{KEY}: lm-eval returned no samples for task {name!r}")
            for leaf in leaves:
                for s in samples[leaf]:
                    loglik = [float(r[0]) for r in s["filtered_resps"]]
                    target = s["target"]
                    if not isinstance(target, int | np.integer):
                        raise RuntimeError(f"{KEY}: task {leaf!r} is not multiple choice (target {target!r})")
                    rows.append({"task": name, "subtask": leaf, "doc_id": int(s["doc_id"]), "target": int(target),
                                 "loglik": loglik, "pred": int(np.argmax(loglik)), "acc": float(s["acc"])})
        return pd.DataFrame.from_records(rows)

    def summarise(self, items: pd.DataFrame, references: Mapping[str, pd.DataFrame]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in self.tasks:
            acc = items.loc[items["task"] == name, "acc"].to_numpy(dtype=float)
            n = len(acc)
            out[f"{name}_acc"] = float(acc.mean()) if n else math.nan
            out[f"{name}_acc_stderr"] = float(acc.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        return out


__all__ = ["LMEvalHarness"]
