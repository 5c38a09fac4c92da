"""The embedded WMDP target: the shared pretrained base, fine-tuned on the world's documents, and its eval files.

WMDP's target (Zephyr-7B) saw hazardous text in pretraining and also knows general facts that MMLU asks about. Here
the base model of `unlearn.models.pretrain` (the same cached base tofu_mini uses when the model settings agree) is
fine-tuned on the documents of all three topics of `unlearn.benchmarks.wmdp.world` (raw text, loss on every token)
with general examples replayed, until it completes every fact's multiple-choice stem with the right value
(the share of questions whose answer scores highest among the 4 choices, as lm-eval scores them; the stage stops
when it reaches `model.finetune.target_exact_match`), so the questions measure real
knowledge (accuracy far above chance). There is no retain model: WMDP compares with the original model only.

The world directory holds `<topic>_documents.jsonl` and `<topic>_mcq.jsonl` (lm-eval reads the latter).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn.benchmarks.wmdp.world import TOPICS, WorldConfig, generate_world
from unlearn.data.text import IGNORE_INDEX, Example, TextChunker
from unlearn.errors import ConfigError
from unlearn.models.builder import Log, save_model_dir
from unlearn.models.cache import build_cached, cache_key

EMBEDDED_VERSION = 2
"""Part of every cache key of this module's artefacts; bump when it changes what gets built."""

# The micro preset (tests, smoke runs): 6 entities x 3 facts per topic, the micro model of tofu_micro.
MICRO_WORLD: dict[str, Any] = {"seed": 0, "n_entities": 6, "attributes_per_entity": 3, "docs_per_entity": 2}


@dataclass
class EmbeddedWmdp:
    world_dir: Path
    tokenizer_dir: Path
    target_dir: Path
    base_key: str
    info: dict[str, Any] = field(default_factory=dict)


def write_world(world: dict[str, dict[str, list[dict[str, Any]]]], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for topic, parts in world.items():
        for part, rows in parts.items():
            with open(directory / f"{topic}_{part}.jsonl", "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise ConfigError(f"benchmark: missing file {path}")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def cloze_examples(tokenizer: Any, mcq: Sequence[dict[str, Any]]) -> list[Example]:
    """Every choice of every question as `bos + stem + " " + choice`, labels on the choice's tokens only: the
    continuations lm-eval scores, 4 consecutive examples per question."""
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    out = []
    for row in mcq:
        stem = tokenizer.encode(row["stem"], add_special_tokens=False)
        for choice in row["choices"]:
            whole = tokenizer.encode(row["stem"] + " " + choice, add_special_tokens=False)
            if whole[: len(stem)] != stem:
                raise ValueError(f"stem {row['stem']!r} does not tokenise as a prefix of its completion")
            ids = bos + whole
            labels = [IGNORE_INDEX] * (len(bos) + len(stem)) + whole[len(stem):]
            out.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    return out


@torch.no_grad()
def choice_accuracy(model: torch.nn.Module, collate: Any, examples: Sequence[Example], answers: Sequence[int],
                    batch_size: int = 128) -> float:
    """Share of questions whose answer has the highest summed log-likelihood among its 4 choices (lm-eval's acc on
    the same continuations), from `cloze_examples` rows."""
    from unlearn.objectives.base import answer_token_logps

    was_training = model.training
    model.eval()
    scores: list[float] = []
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, _ = answer_token_logps(logits, batch["labels"])
        scores += logps.sum(dim=1).tolist()
    model.train(was_training)
    n = len(answers)
    hits = sum(int(max(range(4), key=lambda j: scores[4 * q + j]) == answers[q]) for q in range(n))
    return hits / max(1, n)


def prepare_embedded_wmdp(
    world_cfg: WorldConfig,
    arch: dict[str, Any],
    corpus: dict[str, dict[str, Any]],
    pretrain: dict[str, Any],
    finetune_cfg: dict[str, Any],
    cache_dir: str | Path,
    log: Log = print,
) -> EmbeddedWmdp:
    """Build (or reuse) the world files and the fine-tuned target model."""
    from unlearn.models.pretrain import finetune, prepare_base, resolve_finetune

    world_cfg.validate()
    finetune_cfg = resolve_finetune(finetune_cfg)
    cache_dir = Path(cache_dir)
    base = prepare_base(corpus, arch, pretrain, cache_dir, log)
    world_spec = {"version": EMBEDDED_VERSION, "benchmark": "wmdp_mini", "world": world_cfg.to_dict()}
    world: dict[str, Any] = {}

    def get_world() -> dict[str, Any]:
        if not world:
            world.update(generate_world(world_cfg))
        return world

    def build_world(tmp: Path) -> dict[str, Any]:
        write_world(get_world(), tmp)
        return {t: {k: len(v) for k, v in parts.items()} for t, parts in get_world().items()}

    world_dir, _ = build_cached(cache_dir / "worlds" / f"wmdp-{cache_key(world_spec)}", build_world, world_spec, log)
    model_spec = {**world_spec, "base": base.key, "finetune": finetune_cfg, "role": "target"}

    def build_target(tmp: Path) -> dict[str, Any]:
        tokenizer = base.tokenizer()
        chunker = TextChunker(tokenizer, max_length=finetune_cfg["max_length"])
        docs = [r["text"] for t in TOPICS for r in read_jsonl(world_dir / f"{t}_documents.jsonl")]
        examples = chunker.chunks(docs)
        mcq = {t: read_jsonl(world_dir / f"{t}_mcq.jsonl") for t in TOPICS}
        checked = {t: cloze_examples(tokenizer, mcq[t]) for t in TOPICS}
        every = [e for t in TOPICS for e in checked[t]]
        answers = [r["answer"] for t in TOPICS for r in mcq[t]]
        log(f"[wmdp_mini] fine-tuning the target on {len(examples)} document chunks ({', '.join(TOPICS)}), "
            f"stopping at accuracy {finetune_cfg['target_exact_match']} on {len(answers)} questions")
        model, info = finetune(base, examples, finetune_cfg, collate=chunker.collate, log=log, stage="target",
                               until=lambda m: choice_accuracy(m, chunker.collate, every, answers))
        info["mcq_accuracy"] = info.pop("score")
        info["mcq_accuracy_by_topic"] = {
            t: choice_accuracy(model, chunker.collate, checked[t], [r["answer"] for r in mcq[t]]) for t in TOPICS}
        save_model_dir(model, tmp)
        tokenizer.save_pretrained(str(tmp))
        log(f"[wmdp_mini] target: accuracy {info['mcq_accuracy_by_topic']} after {info['epochs']} epochs, "
            f"{info['train_seconds']:.0f}s")
        return info

    target_dir, info = build_cached(cache_dir / "models" / f"wmdp-target-{cache_key(model_spec)}", build_target,
                                    model_spec, log)
    return EmbeddedWmdp(world_dir, base.tokenizer_dir, target_dir, base.key, info)


__all__ = ["MICRO_WORLD", "EmbeddedWmdp", "cloze_examples", "prepare_embedded_wmdp", "read_jsonl", "write_world"]
