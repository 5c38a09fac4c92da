"""Single-process checks for the distributed backends: config validation and the per-rank micro-batch split.

Bad trainer settings must fail before any process group is joined (so they fail the same way with or without a
launcher) with a ConfigError naming the key; these tests need no second process and run in the default suite.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from unlearn.errors import ConfigError
from unlearn.train.backend import BACKENDS, Backend
from unlearn.train.backends.zero import build_deepspeed_config, load_deepspeed_config

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)


def test_backends_are_registered() -> None:
    assert {"single", "ddp", "fsdp2", "deepspeed"} <= set(BACKENDS.names())


@pytest.mark.parametrize("stage", [4, -1, "2", True, 1.5])
def test_bad_zero_stage_names_the_key(stage: object, no_launcher: None) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.zero_stage"):
        BACKENDS.build("deepspeed", zero_stage=stage)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"zero_stage": 2, "deepspeed_config": {"gradient_clipping": 1.0}}, "gradient_clipping"),
        ({"zero_stage": 2, "deepspeed_config": {"train_batch_size": 64}}, "trainer.batch_size"),
        ({"zero_stage": 2, "deepspeed_config": {"gradient_accumulation_steps": 4}}, "trainer.micro_batch_size"),
        ({"zero_stage": 2, "deepspeed_config": {"bf16": {"enabled": True}}}, "trainer.mixed_precision"),
        ({"zero_stage": 2, "deepspeed_config": {"optimizer": {"type": "AdamW"}}}, "optimizer"),
        ({"zero_stage": 2, "deepspeed_config": "configs/deepspeed/zero3.json"}, "trainer.zero_stage"),
        ({"zero_stage": 3, "deepspeed_config": {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}},
         "offload_optimizer"),
        ({"zero_stage": 2, "deepspeed_config": "configs/deepspeed/nope.json"}, "trainer.deepspeed_config"),
        ({"zero_stage": 0, "mixed_precision": "bf16"}, "trainer.mixed_precision"),
        ({"zero_stage": 2, "mixed_precision": "fp8"}, "trainer.mixed_precision"),
    ],
)
def test_bad_deepspeed_settings_fail_before_launch(kwargs: dict, key: str, no_launcher: None) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        BACKENDS.build("deepspeed", **kwargs)


def test_fsdp2_refuses_fp16(no_launcher: None) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.mixed_precision"):
        BACKENDS.build("fsdp2", mixed_precision="fp16")


@pytest.mark.parametrize("name", ["ddp", "fsdp2", "deepspeed"])
def test_without_a_launcher_the_error_says_how_to_start(name: str, no_launcher: None) -> None:
    with pytest.raises(ConfigError, match="torchrun"):
        BACKENDS.build(name)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_shipped_deepspeed_configs_disable_clipping_explicitly(stage: int) -> None:
    raw = json.loads((ROOT / "configs" / "deepspeed" / f"zero{stage}.json").read_text())
    assert raw["gradient_clipping"] == 0.0  # DeepSpeed 0.19.8 clips at 1.0 when the key is absent
    assert raw["zero_optimization"]["stage"] == stage
    cfg = build_deepspeed_config(load_deepspeed_config(f"configs/deepspeed/zero{stage}.json"), stage, None, 8)
    assert cfg["gradient_clipping"] == 0.0
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) \
        == (8, 1, 1)


def test_built_config_forces_no_clipping_and_fp32_accumulation_under_bf16() -> None:
    cfg = build_deepspeed_config({}, 3, "bf16", 2)
    assert cfg["gradient_clipping"] == 0.0
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["data_types"]["grad_accum_dtype"] == "fp32"


@pytest.mark.parametrize("trainer", ["single", "ddp", "fsdp2", "zero0", "zero1", "zero2", "zero3"])
def test_trainer_configs_match_their_backend(trainer: str) -> None:
    """Every key a trainer config passes to its backend is a parameter of that backend."""
    from hydra import compose, initialize_config_dir

    from unlearn.config import to_container

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = to_container(compose("config", overrides=[f"trainer={trainer}"]))["trainer"]
    loop_keys = {"batch_size", "micro_batch_size", "epochs", "max_steps", "max_grad_norm", "checkpoint_every",
                 "keep_checkpoints"}
    kwargs = {k: v for k, v in cfg.items() if k not in loop_keys | {"backend"}}
    inspect.signature(BACKENDS.get(cfg["backend"])).bind(**kwargs)
    if cfg["backend"] == "deepspeed":
        build_deepspeed_config(load_deepspeed_config(cfg["deepspeed_config"]), cfg["zero_stage"],
                               cfg["mixed_precision"], 2)


class _Rank(Backend):
    """A backend that only claims a place in a group (no communication): enough for the loop's data split."""

    def __init__(self, rank: int, world_size: int) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world_size


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("micro", [None, 1, 2, 3])
def test_every_rank_runs_the_same_number_of_micro_batches(world: int, micro: int | None) -> None:
    """Collectives pair up across ranks: unequal counts would deadlock; padding must carry zero weight."""
    from unlearn.train.loop import LoopConfig, Unlearner

    def collate(batch):
        return {"x": torch.tensor([ex["x"] for ex in batch])}

    for n in range(1, 10):
        examples = [{"x": [i]} for i in range(n)]
        counts, total, seen = [], 0.0, []
        for rank in range(world):
            u = Unlearner.__new__(Unlearner)
            u.backend, u.collate, u.cfg = _Rank(rank, world), collate, LoopConfig(batch_size=n, micro_batch_size=micro)
            micro_batches = u._micro_batches(examples)
            counts.append(len(micro_batches))
            total += sum(w for _, w in micro_batches)
            seen += [int(x) for batch, w in micro_batches if w > 0 for x in batch["x"].reshape(-1)]
        assert len(set(counts)) == 1, (n, counts)
        assert total == pytest.approx(world)  # the mean over ranks of the weights is 1: the global mean loss
        assert sorted(seen) == list(range(n))  # every example exactly once with non-zero weight


def test_gradspace_upcasts_large_flat_partitions_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """ZeRO hands over one flat partition per group; its float64 dot is taken chunk by chunk, same result."""
    import unlearn.directions.gradspace as gs

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    whole = gs.GradSpace().gram([x], [y])
    monkeypatch.setattr(gs, "_CHUNK", 64)
    chunked = gs.GradSpace().gram([x], [y])
    assert chunked.fr == pytest.approx(whole.fr, rel=1e-12)
    assert chunked.ff == pytest.approx(float(x.double() @ x.double()), rel=1e-12)
