"""One unlearning experiment, start to finish, as a plain function of a resolved config.

`run.py` is the Hydra front door; this module is the whole pipeline, callable from tests and scripts:
validate -> prepare benchmark -> evaluate reference models (cached) -> unlearn -> evaluate -> write results.
Nothing a user already has is overwritten: a run directory that already holds results is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
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

from unlearn.config import to_container, validate_required
from unlearn.data.benchmarks import BENCHMARKS, prepare_benchmark
from unlearn.directions import build_direction
from unlearn.errors import ConfigError
from unlearn.evals import build_evaluator
from unlearn.loggers import LOGGERS
from unlearn.models.build import load_model
from unlearn.models.lora import apply_lora, resolve_lora
from unlearn.objectives import FORGET_LOSSES, RETAIN_LOSSES, build_objective
from unlearn.report.table import print_table, summary_frame
from unlearn.train.backend import BACKENDS, check_trainer
from unlearn.train.checkpoint import latest_checkpoint
from unlearn.train.diagnostics import DiagnosticsWriter
from unlearn.train.loop import LoopConfig, Unlearner
from unlearn.train.optim import make_optimizer_factory, make_scheduler

EVAL_CACHE_VERSION = 1
LOOP_KEYS = ("batch_size", "micro_batch_size", "epochs", "max_steps", "max_grad_norm", "checkpoint_every",
             "keep_checkpoints")
RESULT_FILES = ("summary.json", "diagnostics.csv")


@dataclass
class Plan:
    """Everything built from the config before any model is loaded (so bad input fails fast)."""

    cfg: dict[str, Any]
    forget_loss: Any
    retain_loss: Any
    rule: Any
    make_optimizer: Callable
    loop: LoopConfig
    evaluator: Any
    logger: Any
    backend_name: str
    backend_kwargs: dict[str, Any]


def plan(cfg: Mapping[str, Any]) -> Plan:
    """Resolve and validate the whole config; raises ConfigError naming the first bad key."""
    cfg = to_container(cfg)
    validate_required(cfg)
    resolve_lora(cfg["model"].get("lora"))
    BENCHMARKS.get(cfg["benchmark"]["name"])
    method, trainer = cfg["method"], dict(cfg["trainer"])
    backend_name = trainer.pop("backend")
    check_trainer(backend_name, trainer)  # the backend exists and this machine can run what it asks
    loop_kwargs = {k: trainer.pop(k) for k in LOOP_KEYS if k in trainer}
    logger_cfg = {k: v for k, v in cfg["logger"].items() if k != "name"}
    return Plan(
        cfg=cfg,
        forget_loss=build_objective(FORGET_LOSSES, method["forget"]),
        retain_loss=build_objective(RETAIN_LOSSES, method["retain"]),
        rule=build_direction(method["direction"]),
        make_optimizer=make_optimizer_factory(cfg["optimizer"]),
        loop=LoopConfig(seed=int(cfg.get("seed", 0)), **loop_kwargs),
        evaluator=build_evaluator(cfg["eval"]),
        logger=LOGGERS.build(cfg["logger"]["name"], **logger_cfg),
        backend_name=backend_name,
        backend_kwargs=trainer,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def evaluate_reference(
    p: Plan, prepared: Any, path: str, cache_dir: Path, reference_forget_tr: np.ndarray | None, device: str
) -> tuple[dict[str, float], pd.DataFrame, np.ndarray]:
    """Evaluate a fixed model (target or retain), caching per-item results by model, data and eval settings."""
    key = _hash({"v": EVAL_CACHE_VERSION, "model": str(path), "eval": p.cfg["eval"],
                 "benchmark": p.cfg["benchmark"], "prompt": p.cfg["model"].get("prompt"),
                 "ref_tr": None if reference_forget_tr is None else reference_forget_tr.tolist()})
    entry = cache_dir / "evals" / key
    if (entry / "items.jsonl").exists():
        items = pd.read_json(entry / "items.jsonl", lines=True)
        summary = json.loads((entry / "summary.json").read_text())
        forget_tr = np.asarray(json.loads((entry / "forget_tr.json").read_text()), dtype=np.float64)
        return summary, items, forget_tr
    model = load_model(path, dtype=p.cfg["model"].get("dtype", "float32"),
                       trust_remote_code=bool(p.cfg["model"].get("trust_remote_code", False))).to(device)
    result = p.evaluator.evaluate(model, prepared.tokenizer, prepared.formatter, prepared.data, reference_forget_tr)
    tmp = entry.with_name(entry.name + f".tmp{random.randrange(1 << 30)}")
    tmp.mkdir(parents=True)
    result.items.to_json(tmp / "items.jsonl", orient="records", lines=True)
    _write_json(tmp / "summary.json", result.summary)
    _write_json(tmp / "forget_tr.json", [float(x) for x in result.forget_tr])
    if not entry.exists():
        tmp.rename(entry)
    return result.summary, result.items, np.asarray(result.forget_tr, dtype=np.float64)


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


def run_experiment(cfg: Mapping[str, Any], run_dir: str | Path, console_print: bool = True) -> dict[str, float]:
    """Run one experiment into `run_dir` and return its summary metrics."""
    run_dir, cfg, resume_from = _resolve_resume(cfg, Path(run_dir))
    p = plan(cfg)
    # The backend first: under torchrun it joins the process group, and from here on only rank 0 writes files.
    backend = BACKENDS.build(p.backend_name, **p.backend_kwargs)
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

    # -- benchmark and models (rank 0 builds the cache, the others then read it) --------------------------------
    t0 = time.perf_counter()
    if main:
        prepared = prepare_benchmark(p.cfg["benchmark"], p.cfg["model"], cache_dir, log=log)
    backend.barrier()
    if not main:
        prepared = prepare_benchmark(p.cfg["benchmark"], p.cfg["model"], cache_dir, log=log)
    timings = {"prepare_seconds": time.perf_counter() - t0}
    device = str(backend.device)
    model_cfg = p.cfg["model"]
    model = load_model(prepared.target_path, dtype=model_cfg.get("dtype", "float32"),
                       trust_remote_code=bool(model_cfg.get("trust_remote_code", False)))
    loaded_dtype = next(model.parameters()).dtype  # mixed precision trains float32 masters; results go back to it
    model = apply_lora(model, model_cfg.get("lora"))  # unchanged unless model.lora is set

    # -- reference rows (Original and Retain): evaluated on rank 0, cached ---------------------------------------
    rows: dict[str, dict[str, float]] = {}
    reference_tr = None
    t0 = time.perf_counter()
    if main and prepared.retain_path is not None:
        retain_summary, _, reference_tr = evaluate_reference(
            p, prepared, prepared.retain_path, cache_dir, None, device)
        rows["Retain"] = {**retain_summary, "forget_quality": 1.0}  # KS of a sample against itself
    if main and p.cfg.get("eval_reference_models", True):
        rows["Original"], _, _ = evaluate_reference(p, prepared, prepared.target_path, cache_dir, reference_tr, device)
    timings["reference_eval_seconds"] = time.perf_counter() - t0
    backend.barrier()

    # -- unlearn --------------------------------------------------------------------------------------------
    needs_ref = p.forget_loss.needs_ref or p.retain_loss.needs_ref
    ref_model = copy.deepcopy(model).requires_grad_(False).eval() if needs_ref else None
    fmt = prepared.formatter
    forget_ex = [fmt.encode(r["question"], r["answer"]) for r in prepared.data.forget]
    retain_ex = [fmt.encode(r["question"], r["answer"]) for r in prepared.data.retain]
    opt_cfg = p.cfg["optimizer"]
    unlearner = Unlearner(
        model=model, forget_loss=p.forget_loss, retain_loss=p.retain_loss, rule=p.rule, backend=backend,
        make_optimizer=p.make_optimizer, make_scheduler=lambda opt, n: make_scheduler(opt, opt_cfg, n),
        collate=fmt.collate, cfg=p.loop, ref_model=ref_model,
    )
    resume_step = None if resume_from is None else int(resume_from.name.split("-")[1])
    writer = DiagnosticsWriter(run_dir / "diagnostics.csv", resume_after_step=resume_step) if main else None
    if main:
        p.logger.start(p.cfg, run_dir)
    log(f"[unlearn] {p.cfg['method']['name']} on {p.cfg['benchmark']['name']}/{p.cfg['benchmark']['forget_split']}: "
        f"{len(forget_ex)} forget, {len(retain_ex)} retain examples, "
        f"{p.loop.total_steps(len(forget_ex))} steps, {backend.world_size} process(es) -> {run_dir}")

    def on_step(row: dict[str, float]) -> None:
        if writer is not None:
            writer.write(row)
            p.logger.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    t0 = time.perf_counter()
    try:
        unlearner.run(forget_ex, retain_ex, on_step=on_step, checkpoint_dir=run_dir / "checkpoints",
                      resume_from=resume_from)
    finally:
        if writer is not None:
            writer.close()
    timings["unlearn_seconds"] = time.perf_counter() - t0
    trained = backend.export_model()  # collective under sharding; the full model on rank 0 only
    if not main:
        backend.barrier()
        return {}

    # -- evaluate the unlearned model (rank 0) -----------------------------------------------------------------
    assert trained is not None
    steps = pd.read_csv(run_dir / "diagnostics.csv")["step"].tolist()
    t0 = time.perf_counter()
    # Evaluated and saved in the dtype it was loaded in, like the Original and Retain rows (mixed precision
    # upcast the trained weights to float32 masters).
    trained = trained.to(device=device, dtype=loaded_dtype)
    result = p.evaluator.evaluate(trained, prepared.tokenizer, fmt, prepared.data, reference_tr)
    timings["eval_seconds"] = time.perf_counter() - t0
    result.items.to_json(run_dir / "items.jsonl", orient="records", lines=True)
    summary = {**{k: float(v) for k, v in result.summary.items()}, "steps": float(len(steps)), **timings}
    rows[p.cfg["method"]["name"]] = result.summary
    _write_json(run_dir / "references.json", {k: v for k, v in rows.items() if k in ("Original", "Retain")})
    _write_json(run_dir / "summary.json", summary)
    frame = summary_frame({k: rows[k] for k in ("Original", "Retain", p.cfg["method"]["name"]) if k in rows})
    frame.to_csv(run_dir / "table.csv")
    if p.cfg.get("save_model"):
        # A LoRA model is merged so the saved directory is a plain model that loads without peft.
        to_save = trained.merge_and_unload() if hasattr(trained, "merge_and_unload") else trained
        to_save.save_pretrained(run_dir / "model", safe_serialization=True)
        prepared.tokenizer.save_pretrained(run_dir / "model")
    p.logger.summary(summary)
    p.logger.finish()
    if console_print:
        print_table(frame, title=f"{p.cfg['method']['name']} on {p.cfg['benchmark']['name']} "
                                 f"{p.cfg['benchmark']['forget_split']} (seed {p.loop.seed})")
        log(f"[unlearn] results in {run_dir}")
    backend.barrier()
    return summary
