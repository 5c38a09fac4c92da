"""One unlearning experiment, start to finish, as a plain function of a resolved config.

`run.py` is the Hydra front door; this module is the whole pipeline, callable from tests and scripts:

    plan (validate everything) -> prepare the benchmark's Task -> evaluate the reference models (cached)
    -> unlearn -> evaluate the unlearned model -> write results

It knows no benchmark, loss, rule or metric by name: a `Benchmark` turns config into a `Task` (encoded forget and
retain examples, reference models by role, evaluation data), `Evaluator`s turn a model into per-item tables and
those into summaries, and the `Unlearner` runs any objective pair and direction rule on any backend. Nothing a user
already has is overwritten: a run directory that already holds results is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from unlearn.benchmarks.base import Benchmark, Task, build_benchmark
from unlearn.config import to_container, validate_required
from unlearn.directions import build_direction
from unlearn.errors import ConfigError
from unlearn.evals.base import Evaluator, build_evaluators, merge_summaries, read_items, write_items
from unlearn.evals.relearn import RelearnConfig, prefixed, relearn
from unlearn.loggers import LOGGERS
from unlearn.models.build import load_model
from unlearn.models.lora import apply_lora, resolve_lora
from unlearn.models.trainable import apply_trainable, resolve_trainable
from unlearn.objectives import FORGET_LOSSES, RETAIN_LOSSES, build_objective
from unlearn.progress import bar as progress_bar
from unlearn.progress import progress_bars
from unlearn.report.table import print_table, summary_frame
from unlearn.train.backend import BACKENDS, check_trainer
from unlearn.train.checkpoint import latest_checkpoint
from unlearn.train.diagnostics import DiagnosticsWriter
from unlearn.train.loop import LoopConfig, Unlearner
from unlearn.train.optim import make_optimizer_factory, make_scheduler
from unlearn.train.reference import ADAPTER_BACKENDS, AdapterDisabledReference
from unlearn.train.steps import build_step
from unlearn.train.trajectory import Schedule, TrajectoryWriter

EVAL_CACHE_VERSION = 2
"""Part of every cached reference evaluation's key; bump when the cache layout changes."""
LOOP_KEYS = ("batch_size", "micro_batch_size", "epochs", "max_steps", "max_grad_norm", "checkpoint_every",
             "keep_checkpoints")
RESULT_FILES = ("summary.json", "diagnostics.csv", "trajectory.jsonl")
REFERENCE_MODES = ("auto", "copy", "adapters")

Items = dict[str, pd.DataFrame]  # evaluator name -> per-item table


@dataclass
class Plan:
    """Everything built from the config before any model is loaded (so bad input fails fast)."""

    cfg: dict[str, Any]
    benchmark: Benchmark
    forget_loss: Any
    retain_loss: Any
    rule: Any
    step: Any
    reference: str
    make_optimizer: Callable
    loop: LoopConfig
    evaluators: list[Evaluator]
    logger: Any
    backend_name: str
    backend_kwargs: dict[str, Any]
    optimize_metric: str | None
    schedule: Schedule
    relearn: RelearnConfig


def plan(cfg: Mapping[str, Any]) -> Plan:
    """Resolve and validate the whole config; raises ConfigError naming the first bad key."""
    cfg = to_container(cfg)
    validate_required(cfg)
    resolve_lora(cfg["model"].get("lora"))
    resolve_trainable(cfg["model"].get("trainable"))
    benchmark = build_benchmark(cfg["benchmark"], cfg["model"])
    evaluators = build_evaluators(cfg["eval"])
    for ev in evaluators:
        if ev.data is not None and ev.data not in benchmark.provides:
            raise ConfigError(f"eval.{ev.name}: benchmark {cfg['benchmark']['name']!r} has no {ev.data!r} "
                              f"evaluation data (it provides: {', '.join(sorted(benchmark.provides)) or 'none'})")
    metric = cfg.get("optimize_metric")
    if metric is not None and not isinstance(metric, str):
        raise ConfigError(f"optimize_metric: expected a summary metric name or null, got {metric!r}")
    method, trainer = cfg["method"], dict(cfg["trainer"])
    backend_name = trainer.pop("backend")
    check_trainer(backend_name, trainer)  # the backend exists and this machine can run what it asks
    loop_kwargs = {k: trainer.pop(k) for k in LOOP_KEYS if k in trainer}
    logger_cfg = {k: v for k, v in cfg["logger"].items() if k != "name"}
    step = build_step(method.get("step"))
    step.check_backend(backend_name)
    if method.get("direction") is None and step.uses_rule:
        raise ConfigError("method.direction.name: missing required key")
    reference = method.get("reference", "auto")
    if reference not in REFERENCE_MODES:
        raise ConfigError(f"method.reference: expected one of {', '.join(REFERENCE_MODES)}, got {reference!r}")
    if reference == "adapters":
        if resolve_lora(cfg["model"].get("lora")) is None:
            raise ConfigError("method.reference: adapters is the LoRA base with adapters disabled; it needs "
                              "model.lora (use auto or copy without LoRA)")
        if backend_name not in ADAPTER_BACKENDS:
            raise ConfigError(f"method.reference: adapters is tested on trainer.backend "
                              f"{'/'.join(ADAPTER_BACKENDS)}, not {backend_name!r} (use auto or copy)")
    return Plan(
        cfg=cfg,
        benchmark=benchmark,
        forget_loss=build_objective(FORGET_LOSSES, method["forget"]),
        retain_loss=build_objective(RETAIN_LOSSES, method["retain"]),
        rule=build_direction(method["direction"]) if method.get("direction") is not None else None,
        step=step,
        reference=reference,
        make_optimizer=make_optimizer_factory(cfg["optimizer"]),
        loop=LoopConfig(seed=int(cfg.get("seed", 0)), **loop_kwargs),
        evaluators=evaluators,
        logger=LOGGERS.build(cfg["logger"]["name"], **logger_cfg),
        backend_name=backend_name,
        backend_kwargs=trainer,
        optimize_metric=metric,
        schedule=Schedule.from_config(cfg["eval"].get("every"), cfg["eval"].get("every_unit", "epoch")),
        relearn=RelearnConfig.from_config(cfg.get("relearn")),
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def _load(cfg: Mapping[str, Any], path: str) -> Any:
    model_cfg = cfg["model"]
    return load_model(path, dtype=model_cfg.get("dtype", "float32"),
                      trust_remote_code=bool(model_cfg.get("trust_remote_code", False)))


# ---------------------------------------------------------------------------------------------------- references
def evaluate_references(p: Plan, task: Task, roles: list[str], cache_dir: Path, device: str) -> dict[str, Items]:
    """Per-item results of the reference models (role -> evaluator -> items), cached on disk.

    A cache entry is keyed by everything the items depend on: the evaluator (name, version, settings), the model
    (path, dtype) and the task's fingerprint (rendered prompts and scored answers). Entries are published
    atomically, so parallel runs of a sweep never read a half-written one.
    """
    out: dict[str, Items] = {}
    for role in roles:
        path = task.models[role]
        model = None
        out[role] = {}
        for ev in p.evaluators:
            key = _hash({"v": EVAL_CACHE_VERSION, "evaluator": ev.name, "version": ev.version,
                         "settings": ev.settings(), "model": str(path), "dtype": p.cfg["model"].get("dtype"),
                         "task": task.fingerprint})
            entry = cache_dir / "evals" / f"{ev.name}-{key}"
            if (entry / "items.jsonl").exists():
                out[role][ev.name] = read_items(entry / "items.jsonl")
                continue
            if model is None:
                model = _load(p.cfg, path).to(device)
            items = ev.evaluate(model, task)
            tmp = entry.with_name(f".tmp-{entry.name}-{os.getpid()}-{random.randrange(1 << 30)}")
            write_items(items, tmp / "items.jsonl")
            _write_json(tmp / "info.json", {"evaluator": ev.name, "version": ev.version, "settings": ev.settings(),
                                            "model": str(path), "role": role, "task": task.fingerprint})
            if not entry.exists():
                tmp.rename(entry)
            out[role][ev.name] = read_items(entry / "items.jsonl")  # exactly what a later run will read
        del model
    return out


def summarise(evaluators: list[Evaluator], items: Items, references: dict[str, Items],
              forget_only: bool = False) -> dict[str, float]:
    """The merged summary of one model from its items and the reference models' items (`forget_only`: the
    forget-side summary of `evaluate_forget` items)."""
    parts = {}
    for ev in evaluators:
        refs = {r: references[r][ev.name] for r in ev.uses if r in references}
        parts[ev.name] = (ev.summarise_forget if forget_only else ev.summarise)(items[ev.name], refs)
    return merge_summaries(parts)


def evaluate_now(p: Plan, task: Task, model: Any, dtype: torch.dtype, references: dict[str, Items]
                 ) -> dict[str, float]:
    """The summary of the model being unlearned, mid-run, in the dtype results are reported in.

    Under mixed precision the live model holds float32 masters: it is evaluated as a copy cast to the loaded dtype,
    so training continues on untouched weights. RNG state is restored afterwards, so evaluating never changes the
    steps that follow (a run with `eval.every` takes the same steps as one without).
    """
    with torch.random.fork_rng(devices=[]):
        model = getattr(model, "module", model)
        if next(model.parameters()).dtype != dtype:
            model = copy.deepcopy(model).to(dtype=dtype)
        items = {ev.name: ev.evaluate(model, task) for ev in p.evaluators}
    return summarise(p.evaluators, items, references)


def reference_kind(p: Plan) -> str:
    """How the run has the model before unlearning (docs/methods.md#npo-reference): `none` (no objective needs
    it), `precompute` (NPO's sequence log-probs, computed once), `adapters` (under LoRA: the trained model with
    its adapters disabled) or `copy` (a frozen deep copy, a whole second model).

    `method.reference=auto` (default) takes the cheapest exact one: `precompute` when every objective needing
    the reference needs only its sequence log-probs (no second model, no reference forward per step); else
    `adapters` under LoRA on a backend where it is tested (no second model; one no-grad forward per reference
    use, as with the copy); else `copy` (KL on retain batches without LoRA). `copy` and `adapters` force theirs.
    """
    needing = [o for o in (p.forget_loss, p.retain_loss) if o.needs_ref]
    if not needing:
        return "none"
    if p.reference != "auto":
        return p.reference
    if all(o.ref_kind == "sequence_logp" for o in needing):
        return "precompute"
    lora = resolve_lora(p.cfg["model"].get("lora")) is not None
    return "adapters" if lora and p.backend_name in ADAPTER_BACKENDS else "copy"


def needs_reference_copy(p: Plan) -> bool:
    """Whether the run keeps a frozen copy of the model (`reference_kind` is `copy`)."""
    return reference_kind(p) == "copy"


def build_reference(p: Plan, model: Any) -> Any:
    """The `ref_model` the Unlearner gets for `reference_kind(p)` (None: precomputed or not needed)."""
    kind = reference_kind(p)
    if kind == "copy":
        return copy.deepcopy(model).requires_grad_(False).eval()
    if kind == "adapters":
        return AdapterDisabledReference(model)
    return None


def _resolve_resume(cfg: Mapping[str, Any], run_dir: Path) -> tuple[Path, Mapping[str, Any], Path | None]:
    """Interpret `resume`: null (new run), true (resume `run_dir`) or a run directory to resume.

    A resumed run takes its config from the run directory (what the interrupted run really used), continues
    from the newest complete checkpoint there, and writes into that same directory.
    """
    resume = cfg.get("resume") if isinstance(cfg, Mapping) else None
    if resume in (None, False, "", "false", "null"):
        return run_dir, cfg, None
    target = run_dir if resume is True or resume == "true" else Path(str(resume)).expanduser()
    saved = target / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"resume: {target} is not a run directory (no config.yaml)")
    if (target / "summary.json").exists():
        raise ConfigError(f"resume: {target} already finished (summary.json exists); nothing to resume")
    checkpoint = latest_checkpoint(target / "checkpoints")
    if checkpoint is None:
        raise ConfigError(f"resume: no checkpoint in {target}/checkpoints (set trainer.checkpoint_every > 0)")
    return target, yaml.safe_load(saved.read_text()), checkpoint


def run_experiment(cfg: Mapping[str, Any], run_dir: str | Path, console_print: bool = True,
                   progress: bool | None = None) -> dict[str, float]:
    """Run one experiment into `run_dir` and return its summary metrics.

    `progress`: progress bars on model building, unlearning and evaluation (None: when stderr is a terminal;
    never without `console_print`)."""
    run_dir, cfg, resume_from = _resolve_resume(cfg, Path(run_dir))
    p = plan(cfg)
    try:
        with progress_bars(progress if console_print else False):
            return _run_planned(p, run_dir, resume_from, console_print)
    except BaseException:
        p.logger.finish(failed=True)  # an external logger's run is closed (marked failed) on any failure too
        raise


def _run_planned(p: Plan, run_dir: Path, resume_from: Path | None, console_print: bool) -> dict[str, float]:
    # The backend first: under torchrun it joins the process group, and from here on only rank 0 writes files.
    backend = BACKENDS.build(p.backend_name, **p.backend_kwargs)
    main = backend.rank == 0
    if not main:  # one bar per run, not one per rank
        with progress_bars(False):
            return _run_ranked(p, run_dir, resume_from, console_print, backend)
    return _run_ranked(p, run_dir, resume_from, console_print, backend)


def _run_ranked(p: Plan, run_dir: Path, resume_from: Path | None, console_print: bool,
                backend: Any) -> dict[str, float]:
    main = backend.rank == 0
    if resume_from is None and main:
        clash = [f for f in RESULT_FILES if (run_dir / f).exists()]
        if clash:
            raise ConfigError(f"hydra.run.dir: {run_dir} already holds a run's results ({', '.join(clash)}); "
                              "refusing to overwrite them — choose a new directory (or resume=<run dir>)")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(p.cfg, sort_keys=False))
    cache_dir = Path(p.cfg.get("cache_dir") or ".cache/unlearn").expanduser()
    seed_everything(p.loop.seed)
    log = print if console_print and main else (lambda *_: None)
    method = p.cfg["method"]["name"]

    # -- the task (rank 0 builds the cache, the others then read it) --------------------------------------------
    t0 = time.perf_counter()
    if main:
        task = p.benchmark.prepare(cache_dir, log)
    backend.barrier()
    if not main:
        task = p.benchmark.prepare(cache_dir, log)
    for ev in p.evaluators:
        ev.check(task)
    timings = {"prepare_seconds": time.perf_counter() - t0}
    device = str(backend.device)
    model = _load(p.cfg, task.start or task.models["target"])  # `start`: a chain of unlearning requests
    loaded_dtype = next(model.parameters()).dtype  # mixed precision trains float32 masters; results go back to it
    model = apply_lora(model, p.cfg["model"].get("lora"))  # unchanged unless model.lora is set
    trainable = apply_trainable(model, p.cfg["model"].get("trainable"))  # before any backend wraps the model

    # -- reference rows (Original, Retain): evaluated on rank 0, cached ------------------------------------------
    t0 = time.perf_counter()
    used = {r for ev in p.evaluators for r in ev.uses}
    shown = list(task.models) if p.cfg.get("eval_reference_models", True) else []
    roles = [r for r in task.models if r in used or r in shown]
    references = evaluate_references(p, task, roles, cache_dir, device) if main else {}
    rows = {task.role_names.get(r, r): summarise(p.evaluators, references[r], references) for r in shown if main}
    timings["reference_eval_seconds"] = time.perf_counter() - t0
    backend.barrier()

    # -- unlearn ------------------------------------------------------------------------------------------------
    ref_model = build_reference(p, model)
    opt_cfg = p.cfg["optimizer"]
    unlearner = Unlearner(
        model=model, forget_loss=p.forget_loss, retain_loss=p.retain_loss, rule=p.rule, backend=backend,
        make_optimizer=p.make_optimizer, make_scheduler=lambda opt, n: make_scheduler(opt, opt_cfg, n),
        collate=task.collate, cfg=p.loop, ref_model=ref_model, step=p.step,
    )
    resume_step = None if resume_from is None else int(resume_from.name.split("-")[1])
    writer = DiagnosticsWriter(run_dir / "diagnostics.csv", resume_after_step=resume_step) if main else None
    total = p.loop.total_steps(len(task.forget))
    steps_per_epoch = -(-len(task.forget) // p.loop.batch_size)
    eval_steps = p.schedule.steps(total, steps_per_epoch)
    trajectory = None
    if main and eval_steps:
        trajectory = TrajectoryWriter(run_dir / "trajectory.jsonl", resume_after_step=resume_step)
        if resume_step is None:  # step 0: the target model, as the Original row when it was evaluated
            start = None if task.start else rows.get(task.role_names.get("target", "target"))
            trajectory.write({"step": 0, "epoch": 0.0,
                              **(start or evaluate_now(p, task, model, loaded_dtype, references))})
    if main:
        p.logger.start(p.cfg, run_dir)
    log(f"[unlearn] {method} on {task.benchmark}/{task.tag}: {len(task.forget)} forget, {len(task.retain)} retain "
        f"examples, {total} steps, {len(trainable)} trained parameter tensors, {backend.world_size} process(es) -> "
        f"{run_dir}")

    # On an interactive console only (quiet in logs, tests and multirun jobs): `unlearn.progress`.
    bar = progress_bar(total=total, initial=resume_step or 0, desc=f"unlearn {method}", unit="step")

    def on_step(row: dict[str, float]) -> None:
        step = int(row["step"])
        bar.update(1)
        bar.set_postfix(loss_f=f"{row.get('loss_f', float('nan')):.3g}", refresh=False)
        if writer is not None:
            writer.write(row)
            p.logger.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=step)
        if step in eval_steps and step != total:  # the last step is the final evaluation below
            current = backend.export_model()  # collective under sharding; the full model on rank 0
            if trajectory is not None:
                result = evaluate_now(p, task, current, loaded_dtype, references)
                trajectory.write({"step": step, "epoch": step / steps_per_epoch, **result})
                p.logger.log({f"eval/{k}": v for k, v in result.items()}, step=step)
            backend.barrier()

    t0 = time.perf_counter()
    try:
        unlearner.run(task.forget, task.retain, on_step=on_step, checkpoint_dir=run_dir / "checkpoints",
                      resume_from=resume_from)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    timings["unlearn_seconds"] = time.perf_counter() - t0
    trained = backend.export_model()  # collective under sharding; the full model on rank 0 only
    if not main:
        backend.barrier()
        return {}

    # -- evaluate the unlearned model (rank 0) -------------------------------------------------------------------
    assert trained is not None
    steps = pd.read_csv(run_dir / "diagnostics.csv")["step"].tolist()
    t0 = time.perf_counter()
    # Evaluated and saved in the dtype it was loaded in, like the reference rows (mixed precision upcast the
    # trained weights to float32 masters).
    trained = trained.to(device=device, dtype=loaded_dtype)
    items = {ev.name: ev.evaluate(trained, task) for ev in p.evaluators}
    result = summarise(p.evaluators, items, references)
    timings["eval_seconds"] = time.perf_counter() - t0
    if trajectory is not None:
        trajectory.write({"step": total, "epoch": total / steps_per_epoch, **result})
        trajectory.close()
        p.logger.log({f"eval/{k}": v for k, v in result.items()}, step=total)
    for name, table in items.items():
        write_items(table, run_dir / "items" / f"{name}.jsonl")
        p.logger.table(f"items/{name}", table)
    for role, per_eval in references.items():  # the run directory alone re-aggregates (unlearn.report.resummarise)
        for name, table in per_eval.items():
            write_items(table, run_dir / "items" / role / f"{name}.jsonl")
    relearned: dict[str, float] = {}
    if p.relearn.enabled:  # the relearning attack, on a copy (docs/metrics.md#relearning-attack)
        t0 = time.perf_counter()
        attacked = relearn(trained, task.forget, task.collate, p.relearn, device).to(dtype=loaded_dtype)
        only = p.relearn.scope == "forget"  # the attack measures what comes back of the forget set
        attacked_items = {ev.name: (ev.evaluate_forget if only else ev.evaluate)(attacked, task)
                          for ev in p.evaluators}
        relearned = prefixed(summarise(p.evaluators, attacked_items, references, forget_only=only))
        del attacked
        timings["relearn_seconds"] = time.perf_counter() - t0
    summary = {**result, **relearned, "steps": float(len(steps)), **timings}
    rows[method] = result
    _write_json(run_dir / "references.json", {k: v for k, v in rows.items() if k != method})
    _write_json(run_dir / "summary.json", summary)
    columns = [c for ev in p.evaluators for c in ev.headline]
    frame = summary_frame(rows, columns)
    frame.to_csv(run_dir / "table.csv")
    p.logger.table("results", frame)
    if p.cfg.get("save_model"):
        # A LoRA model is merged so the saved directory is a plain model that loads without peft.
        to_save = trained.merge_and_unload() if hasattr(trained, "merge_and_unload") else trained
        to_save.save_pretrained(run_dir / "model", safe_serialization=True)
        task.tokenizer.save_pretrained(run_dir / "model")
    p.logger.summary(summary)
    p.logger.finish()
    if console_print:
        print_table(frame, title=f"{method} on {task.benchmark} {task.tag} (seed {p.loop.seed})")
        log(f"[unlearn] results in {run_dir}")
    if p.optimize_metric is not None and p.optimize_metric not in summary:
        raise ConfigError(f"optimize_metric: {p.optimize_metric!r} is not in this run's summary; it has "
                          f"{', '.join(sorted(summary))}")
    backend.barrier()
    return summary
