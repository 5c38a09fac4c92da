"""Train a small Llama from scratch on question-answer rows: the generic builder behind every embedded benchmark.

An embedded benchmark (tofu_mini, and later muse_mini and wmdp_mini) needs models that really *know* a synthetic
world, so that forgetting it is measurable. This module trains a tiny Llama until it reproduces its training answers
by greedy decoding (checked cheaply by teacher-forced exact match, which is equivalent), and resolves the
architecture and training settings from config with errors that name the key. What to train on, and caching, belong
to the benchmark that calls it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from unlearn.data.format import DEFAULT_TEMPLATE, IGNORE_INDEX, QAFormatter
from unlearn.errors import ConfigError
from unlearn.models.build import build_llama, count_parameters
from unlearn.progress import bar as progress_bar

# Defaults, measured on 2 CPU cores: this 1.3M-parameter Llama reaches 95% greedy exact match
# on tofu_mini's default world (1080 QA rows) in 20 epochs, ~53 s uncontended (~110 s with the cores shared). Higher
# learning rates, smaller batches and cosine decay did not reduce the epoch count (19-36 epochs).
DEFAULT_ARCH: dict[str, Any] = {
    "vocab_size": 2048,
    "hidden_size": 128,
    "num_layers": 4,
    "num_heads": 4,
    "intermediate_size": 512,
    "max_position_embeddings": 128,
}
DEFAULT_TRAIN: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 0.0,
    "warmup_steps": 50,
    "decay_epochs": 0,
    "min_lr_ratio": 0.1,
    "batch_size": 32,
    "max_epochs": 60,
    "min_epochs": 8,
    "check_every": 2,
    "target_exact_match": 0.95,
    "seed": 0,
    "max_length": 128,
    "template": DEFAULT_TEMPLATE,
}


Log = Callable[[str], None]


def _merge(defaults: dict[str, Any], given: dict[str, Any] | None, key: str) -> dict[str, Any]:
    """Defaults overlaid with `given`; unknown keys and wrongly typed values raise ConfigError naming the key."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; known: {sorted(defaults)}")
    out = dict(defaults)
    for name, value in given.items():
        want = type(defaults[name])
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, want):
            raise ConfigError(f"{key}.{name}: expected {want.__name__}, got {value!r}")
        out[name] = value
    return out


def resolve_arch(arch: dict[str, Any] | None) -> dict[str, Any]:
    """Full architecture settings (defaults filled in), validated."""
    out = _merge(DEFAULT_ARCH, arch, "model.arch")
    for name, value in out.items():
        if value < 1:
            raise ConfigError(f"model.arch.{name}: must be positive, got {value}")
    if out["hidden_size"] % out["num_heads"]:
        raise ConfigError(f"model.arch.hidden_size: {out['hidden_size']} not divisible by num_heads={out['num_heads']}")
    return out


def resolve_train(
    train: dict[str, Any] | None, key: str = "model.pretrain", defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Full training settings of one stage (`defaults`, DEFAULT_TRAIN if None, filled in), validated; errors name
    `key.<setting>`."""
    out = _merge(DEFAULT_TRAIN if defaults is None else defaults, train, key)
    if out["decay_epochs"] < 0 or not 0.0 <= out["min_lr_ratio"] <= 1.0:
        raise ConfigError(f"{key}.decay_epochs / min_lr_ratio: need decay_epochs >= 0, 0 <= ratio <= 1")
    positive = ("lr", "batch_size", "max_epochs", "check_every", "max_length")
    for name in positive:
        if out[name] <= 0:
            raise ConfigError(f"{key}.{name}: must be positive, got {out[name]}")
    if not 0.0 < out["target_exact_match"] <= 1.0:
        raise ConfigError(f"{key}.target_exact_match: must be in (0, 1], got {out['target_exact_match']}")
    if "{question}" not in out["template"]:
        raise ConfigError(f"{key}.template: must contain '{{question}}', got {out['template']!r}")
    return out


# ---------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def teacher_forced_exact_match(
    model: torch.nn.Module, formatter: QAFormatter, encoded: Sequence[dict], batch_size: int = 128
) -> float:
    """Share of examples whose every answer token (eos included) is the argmax given the true prefix.

    This equals greedy exact match: greedy decoding reproduces the answer iff each answer token is the argmax
    after the true prefix (induction over positions), but it costs one forward pass instead of one per token,
    so training can check it often.
    """
    was_training = model.training
    model.eval()
    hits = 0
    for i in range(0, len(encoded), batch_size):
        batch = formatter.collate(encoded[i : i + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        pred = logits[:, :-1].argmax(-1)
        target = batch["labels"][:, 1:]
        ok = (pred == target) | (target == IGNORE_INDEX)
        hits += int(ok.all(dim=-1).sum())
    model.train(was_training)
    return hits / max(1, len(encoded))


@torch.no_grad()
def greedy_exact_match(
    model: Any, formatter: QAFormatter, rows: Sequence[dict[str, str]], batch_size: int = 128
) -> float:
    """Share of rows whose greedy generation (left-padded batches) is exactly the answer followed by eos."""
    was_training = model.training
    model.eval()
    hits = 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        answers = [formatter.encode_answer(r["answer"]) for r in chunk]
        batch = formatter.collate_prompts([r["question"] for r in chunk])
        out = model.generate(
            **batch,
            max_new_tokens=max(len(a) for a in answers),
            do_sample=False,
            pad_token_id=formatter.pad_id,
            eos_token_id=formatter.eos_id,
        )
        new = out[:, batch["input_ids"].shape[1] :].tolist()
        for gen, ans in zip(new, answers, strict=True):
            hits += int(gen[: len(ans)] == ans)
    model.train(was_training)
    return hits / max(1, len(rows))


# ---------------------------------------------------------------------------------------------------- training
def _lr_lambda(warmup_steps: int, decay_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup, then constant (decay_steps 0) or cosine decay to `min_ratio` over `decay_steps`.

    Decay matters for memorisation: a high rate finds the facts fast, a lower one settles the last few into
    exact recall instead of letting them oscillate.
    """
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay_steps <= 0:
            return 1.0
        t = min(1.0, (step - warmup) / max(1, decay_steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def new_model(tokenizer: Any, arch: dict[str, Any], seed: int, max_length: int = 0) -> torch.nn.Module:
    """A randomly initialised Llama of shape `arch` for `tokenizer` (float32, reproducible in `seed`)."""
    return build_llama(
        vocab_size=len(tokenizer),
        hidden_size=arch["hidden_size"],
        num_layers=arch["num_layers"],
        num_heads=arch["num_heads"],
        intermediate_size=arch["intermediate_size"],
        max_position_embeddings=max(arch["max_position_embeddings"], max_length),
        seed=seed,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train_stage(
    model: torch.nn.Module,
    examples: Sequence[dict[str, list[int]]],
    collate: Callable[[Sequence[dict[str, list[int]]]], dict[str, torch.Tensor]],
    train: dict[str, Any],
    until: Callable[[torch.nn.Module], float] | None = None,
    log: Log = print,
    stage: str = "train",
) -> dict[str, Any]:
    """One training stage: AdamW over shuffled epochs of `examples` (loss on their labelled tokens).

    With `until` (a score of the model, e.g. exact match) the stage stops once the score reaches
    `train["target_exact_match"]`, checked every `check_every` epochs from `min_epochs` on; without it, the stage
    runs `max_epochs` epochs (a pretraining stage on a corpus, say). Deterministic in `train["seed"]`: the data
    order comes from its own generator. Several stages in a row (pretrain, then fine-tune) share one model.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    gen = torch.Generator().manual_seed(train["seed"])
    bs = train["batch_size"]
    steps_per_epoch = math.ceil(len(examples) / bs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(train["warmup_steps"], train["decay_epochs"] * steps_per_epoch, train["min_lr_ratio"])
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    score, epoch, history = float("nan"), 0, []
    model.train()
    # Up to max_epochs: a stage with a target stops early, and the bar then closes short of its total.
    steps_bar = progress_bar(total=train["max_epochs"] * steps_per_epoch, desc=f"build {stage}", unit="step")
    for epoch in range(1, train["max_epochs"] + 1):
        order = torch.randperm(len(examples), generator=gen).tolist()
        total = 0.0
        for s in range(steps_per_epoch):
            batch = collate([examples[j] for j in order[s * bs : (s + 1) * bs]])
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            steps_bar.update(1)
        last = epoch == train["max_epochs"]
        if epoch >= train["min_epochs"] and (epoch % train["check_every"] == 0 or last):
            row: dict[str, Any] = {"epoch": epoch, "loss": total / steps_per_epoch}
            if until is not None:
                score = until(model)
                row["exact_match"] = score
                steps_bar.set_postfix(epoch=epoch, exact_match=f"{score:.3f}", refresh=False)
            history.append(row)
            log(f"  [{stage}] epoch {epoch}: loss {row['loss']:.4f}"
                + (f", exact match {score:.3f}" if until is not None else "")
                + f" ({time.perf_counter() - start:.0f}s)")
            if until is not None and score >= train["target_exact_match"]:
                break
    steps_bar.close()
    model.eval()
    return {
        "epochs": epoch,
        "score": score,
        "train_seconds": round(time.perf_counter() - start, 2),
        "train_cpu_seconds": round(time.process_time() - cpu_start, 2),
        "n_examples": len(examples),
        "history": history,
    }


def encode_qa(rows: Sequence[dict[str, str]], formatter: QAFormatter, key: str) -> list[dict[str, list[int]]]:
    """Encode QA rows for training; a cut answer is a ConfigError naming `key` (it could never be reproduced)."""
    encoded = [formatter.encode(r["question"], r["answer"]) for r in rows]
    for row, enc in zip(rows, encoded, strict=True):
        if enc["input_ids"][-1] != formatter.eos_id:
            # A cut answer can never be reproduced in full: exact match would be measured on a prefix.
            raise ConfigError(
                f"{key}: {formatter.max_length} truncates the training example {row['question'][:60]!r}; raise it"
            )
    return encoded


def fit_qa(
    model: torch.nn.Module,
    rows: Sequence[dict[str, str]],
    formatter: QAFormatter,
    train: dict[str, Any],
    log: Log = print,
    stage: str = "qa",
) -> dict[str, Any]:
    """Train `model` on QA rows (loss on answer tokens) until greedy exact match reaches the target.

    Loss is on answer tokens only (the formatter masks the prompt), as TOFU fine-tuning does: the models must
    know the answers, not learn to produce questions. Stops on teacher-forced exact match (one forward pass,
    equal to greedy exact match), then confirms with real greedy decoding.
    """
    encoded = encode_qa(rows, formatter, "model.pretrain.max_length")
    info = train_stage(model, encoded, formatter.collate, train,
                       until=lambda m: teacher_forced_exact_match(m, formatter, encoded), log=log, stage=stage)
    check_start = time.perf_counter()
    greedy = greedy_exact_match(model, formatter, rows)
    info.update({
        "exact_match": greedy,
        "exact_match_teacher_forced": info.pop("score"),
        "reached_target": greedy >= train["target_exact_match"],
        "greedy_check_seconds": round(time.perf_counter() - check_start, 2),
        "n_rows": len(rows),
    })
    if not info["reached_target"]:
        log(f"  WARNING: exact match {greedy:.3f} < target {train['target_exact_match']} after {info['epochs']} "
            "epochs")
    return info


def train_model(
    rows: Sequence[dict[str, str]],
    tokenizer: Any,
    arch: dict[str, Any],
    train: dict[str, Any],
    log: Log = print,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a fresh Llama on `rows` until greedy exact match reaches the target (or max_epochs)."""
    formatter = QAFormatter(tokenizer, template=train["template"], max_length=train["max_length"])
    model = new_model(tokenizer, arch, train["seed"], train["max_length"])
    info = fit_qa(model, rows, formatter, train, log=log, stage="train")
    info["param_count"] = count_parameters(model)
    info["torch_threads"] = torch.get_num_threads()
    return model, info


# ---------------------------------------------------------------------------------------------------- cache
def save_model_dir(model: Any, directory: Path) -> None:
    """save_pretrained (safetensors) without a progress bar for a one-shard file; restores the setting."""
    from transformers.utils import logging as hf_logging

    bars_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(directory), safe_serialization=True)
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()

