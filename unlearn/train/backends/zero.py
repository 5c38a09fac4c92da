"""DeepSpeed ZeRO (stages 0-3) as an unlearning backend.

The loop's two passes (forget, retain) are each one DeepSpeed accumulation window: the engine's boundary flag is
set on the last micro-batch of a pass, so DeepSpeed reduces (ZeRO-0/1: all-reduce; ZeRO-2/3: reduce-scatter)
at the end of each pass and every rank is left with its own partition of that pass's averaged gradient.
`zero_partitions` reads the partitions; GradSpace takes the local dot products and all-reduces them once; the
loop writes u into the partition buffers; `engine.step()` then steps the fp32 master partitions with u. No rank
ever holds a full gradient (ZeRO-2/3) or gathers one for the inner products.

Things DeepSpeed would otherwise do on its own and that the loop owns instead:
- batch sizes and accumulation: the loop weights every micro-batch by its share of the global batch, so the
  engine is told `gradient_accumulation_steps = 1` (no loss division) and the boundary is set per pass;
- clipping: `gradient_clipping` is forced to 0.0 (DeepSpeed 0.19.8 clips at 1.0 when the key is absent);
  clipping acts on u through `trainer.max_grad_norm`;
- the optimizer and LR schedule come from the `optimizer` config; DeepSpeed wraps the torch optimizer.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from unlearn.directions.gradspace import GradSpace
from unlearn.errors import ConfigError
from unlearn.train.backend import BACKENDS, OptimizerFactory, warn_if_training_half_precision
from unlearn.train.backends.dist import DistributedBackend
from unlearn.train.backends.zero_partitions import (
    GradPieces,
    MasterState,
    cut_like,
    grad_pieces,
    loss_scaler_state,
    master_state,
    restore_loss_scaler,
)
from unlearn.train.checkpoint import STATE_FILE, optimizer_from_tensors, optimizer_to_tensors, step_dir

ZERO_STAGES = (0, 1, 2, 3)
# Keys of a DeepSpeed config that the trainer config owns; setting them in the DeepSpeed file is an error
# rather than silently ignored.
OWNED_KEYS = {
    "train_batch_size": "trainer.batch_size",
    "train_micro_batch_size_per_gpu": "trainer.micro_batch_size",
    "gradient_accumulation_steps": "trainer.micro_batch_size",
    "optimizer": "optimizer.*",
    "scheduler": "optimizer.scheduler",
    "fp16": "trainer.mixed_precision",
    "bf16": "trainer.mixed_precision",
}
REPO_ROOT = Path(__file__).resolve().parents[3]


def load_deepspeed_config(source: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """A DeepSpeed config from a dict, or a JSON/YAML file (relative paths: the working directory, then the repo)."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    path = Path(source).expanduser()
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.is_file():
        raise ConfigError(f"trainer.deepspeed_config: no such file {source!r}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"trainer.deepspeed_config: {path} is not valid JSON/YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"trainer.deepspeed_config: {path} must hold a mapping, got {type(data).__name__}")
    return data


def build_deepspeed_config(
    base: Mapping[str, Any], zero_stage: int, mixed_precision: str | None, world_size: int
) -> dict[str, Any]:
    """The config handed to `deepspeed.initialize`: the user's file plus the settings the loop depends on."""
    cfg = copy.deepcopy(dict(base))
    for key, owner in OWNED_KEYS.items():
        if key in cfg:
            raise ConfigError(f"trainer.deepspeed_config: {key!r} is set by {owner}; remove it from the file")
    clip = cfg.get("gradient_clipping", 0.0)
    if clip not in (0, 0.0):
        raise ConfigError(
            f"trainer.deepspeed_config.gradient_clipping: must be 0.0, got {clip!r}; DeepSpeed would clip the raw "
            "gradient partitions. Clip the combined direction u with trainer.max_grad_norm instead"
        )
    zero = dict(cfg.get("zero_optimization") or {})
    if "stage" in zero and int(zero["stage"]) != zero_stage:
        raise ConfigError(
            f"trainer.zero_stage: {zero_stage} disagrees with zero_optimization.stage={zero['stage']} in "
            "trainer.deepspeed_config"
        )
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none")
        if device not in (None, "none"):
            raise ConfigError(f"trainer.deepspeed_config.zero_optimization.{key}: offload is not supported "
                              "(the loop reads and rewrites gradient partitions on the device)")
    zero["stage"] = zero_stage
    cfg.update({
        "zero_optimization": zero,
        "gradient_clipping": 0.0,
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        # torch AdamW/SGD step elementwise, so they are correct on flat partitions; DeepSpeed only lists
        # its own and Adam/AdamW as "tested".
        "zero_allow_untested_optimizer": True,
    })
    cfg.setdefault("steps_per_print", 1 << 30)
    cfg.setdefault("wall_clock_breakdown", False)
    if mixed_precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif mixed_precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    if mixed_precision is not None:
        # Accumulate micro-batch gradients in fp32: summing many bf16 gradients loses the digits that the
        # projection's cancelling inner product <g_f, g_r> depends on.
        cfg.setdefault("data_types", {}).setdefault("grad_accum_dtype", "fp32")
    return cfg


def _skip_cpu_shm_op() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce op (~30 s on first use).

    The op serves only DeepSpeed-inference's `inference_all_reduce`; training communication goes through
    torch.distributed (gloo on CPU). Marking it incompatible makes `build_shm_op()` return None. CUDA runs are
    untouched.
    """
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


@BACKENDS.register("deepspeed")
class DeepSpeedBackend(DistributedBackend):
    """DeepSpeed engine with ZeRO stage `zero_stage` (0: data parallel; 1: + optimizer state partitioned;
    2: + gradients partitioned; 3: + parameters partitioned).

    Args:
        zero_stage: 0, 1, 2 or 3 (`trainer.zero_stage`).
        deepspeed_config: path to a DeepSpeed JSON/YAML file (see configs/deepspeed/) or a mapping; batch sizes,
            optimizer, scheduler and precision must not be set there (the trainer/optimizer configs own them).
        mixed_precision: null, `bf16` or `fp16` (DeepSpeed keeps fp32 master weights; fp16 uses dynamic loss
            scaling). Needs zero_stage >= 1.
        gradient_checkpointing: recompute activations in backward.

    The reference model: a replicated frozen copy for stages 0-2 (it costs one model's memory per rank, in the
    training precision); for stage 3 it is partitioned by its own ZeRO-3 engine without an optimizer.
    """

    supported_precisions = ("bf16", "fp16")

    def __init__(self, zero_stage: int = 2, deepspeed_config: str | Mapping[str, Any] | None = None,
                 device: str = "auto", mixed_precision: str | None = None,
                 gradient_checkpointing: bool = False, process_group_timeout: float = 1800.0) -> None:
        # Validate the config before joining a process group, so a typo fails at once on every rank.
        if isinstance(zero_stage, bool) or not isinstance(zero_stage, int) or zero_stage not in ZERO_STAGES:
            raise ConfigError(f"trainer.zero_stage: must be one of 0, 1, 2, 3, got {zero_stage!r}")
        if zero_stage == 0 and mixed_precision not in (None, "no", "fp32", "float32"):
            raise ConfigError(
                f"trainer.mixed_precision: {mixed_precision!r} needs trainer.zero_stage >= 1 (DeepSpeed's stage-0 "
                "mixed-precision optimizer keeps its gradients where the loop cannot reach them)"
            )
        self.zero_stage = zero_stage
        # ZeRO-0 keeps everything on every rank: rank 0 writes the single-process checkpoint, like DDP.
        self.replicated_state = zero_stage == 0
        base = load_deepspeed_config(deepspeed_config)
        build_deepspeed_config(base, zero_stage, mixed_precision, world_size=1)  # validation only
        super().__init__(device=device, mixed_precision=mixed_precision,
                         gradient_checkpointing=gradient_checkpointing, process_group_timeout=process_group_timeout)
        self.mixed_precision = mixed_precision if self.param_dtype is not None else None
        self.ds_config = build_deepspeed_config(base, zero_stage, self.mixed_precision, self.world_size)
        self.engine: Any = None
        self.pieces: GradPieces | None = None
        self._pass_grads: list[Tensor] | None = None
        self._master_state: MasterState | None = None

    def autocast_dtype(self) -> torch.dtype | None:
        return None  # the engine runs the module in bf16/fp16 itself and keeps float32 master partitions

    # -- setup -------------------------------------------------------------------------------------------
    def _deepspeed(self) -> Any:
        import deepspeed

        _skip_cpu_shm_op()
        deepspeed.utils.logger.setLevel("WARNING")
        return deepspeed

    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory) -> nn.Module:
        deepspeed = self._deepspeed()
        if self.param_dtype is None:  # with bf16/fp16 the engine keeps float32 master partitions itself
            warn_if_training_half_precision(model)
        model = self._prepare(model)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        optimizer = make_optimizer(params)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config)
        self.engine = engine
        self.model = engine
        # The torch optimizer DeepSpeed wraps: its param_groups (now holding the fp32 partitions) are the ones
        # stepped, so an LR scheduler built on it drives the real learning rate.
        self.optimizer = engine.basic_optimizer
        self._params = [p for p in engine.module.parameters() if p.requires_grad]
        self.pieces = grad_pieces(engine, self._params)
        self._master_state = None
        self.space = GradSpace(all_reduce=self._all_reduce_sum if self.pieces.sharded else None)
        return engine

    def export_model(self) -> nn.Module | None:
        """ZeRO 0-2 keep full parameters on every rank; ZeRO-3 gathers them onto rank 0 (collective)."""
        engine, _ = self._require_engine()
        if self.zero_stage < 3:
            return engine.module if self.rank == 0 else None
        from unlearn.train.backends.dist import rebuild_full_model

        full = engine._zero3_consolidated_16bit_state_dict()  # despite the name: the training dtype
        return rebuild_full_model(engine.module, full) if self.rank == 0 else None

    def prepare_reference(self, ref_model: nn.Module) -> nn.Module:
        if self.zero_stage < 3:
            return super().prepare_reference(ref_model)
        deepspeed = self._deepspeed()
        ref_model = self._prepare(ref_model.requires_grad_(False)).eval()
        cfg = {k: v for k, v in self.ds_config.items() if k not in ("zero_allow_untested_optimizer",)}
        ref_engine, _, _, _ = deepspeed.initialize(model=ref_model, config=cfg)
        ref_engine.eval()
        return ref_engine

    # -- gradients ---------------------------------------------------------------------------------------
    def _require_engine(self) -> tuple[Any, GradPieces]:
        if self.engine is None or self.pieces is None:
            raise RuntimeError("DeepSpeedBackend.setup() must run first")
        return self.engine, self.pieces

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """One pass = one accumulation window: DeepSpeed reduces into partitions at the pass's last micro-batch."""
        engine, _ = self._require_engine()
        engine.set_gradient_accumulation_boundary(bool(last))
        self._pass_grads = None
        yield

    def backward(self, loss: Tensor) -> None:
        """Through the engine: it applies the fp16 loss scale and runs the reduction epilogue."""
        engine, _ = self._require_engine()
        engine.backward(loss, scale_wrt_gas=False)

    def grads(self) -> list[Tensor]:
        """This rank's pieces of the pass's gradient (memoised: u is written into these very tensors)."""
        _, pieces = self._require_engine()
        if self._pass_grads is None:
            self._pass_grads = pieces.current()
        return self._pass_grads

    def zero_grads(self) -> None:
        _, pieces = self._require_engine()
        pieces.clear()
        self._pass_grads = None

    def take_grads(self) -> list[Tensor]:
        _, pieces = self._require_engine()
        taken = pieces.take()
        pieces.clear()
        self._pass_grads = None
        return taken

    # -- parameters in the gradient's layout (step strategies) ---------------------------------------------
    def _masters(self) -> MasterState:
        engine, _ = self._require_engine()
        if self._master_state is None:
            self._master_state = master_state(engine)
        return self._master_state

    def grad_pieces(self) -> list[Tensor]:
        """ZeRO-0: the per-parameter gradients. ZeRO-1/2/3: this pass's gradient partitions, cut to line up with
        the fp32 master partitions (`cut_like`); writes into them are the update `step()` installs."""
        if self.zero_stage == 0:
            return self.grads()
        return cut_like(self.grads(), self._masters().masters())

    def param_pieces(self) -> list[Tensor]:
        """ZeRO-0: the parameters themselves (the torch optimizer steps them). ZeRO-1/2/3: this rank's fp32
        master partitions, the weights the optimizer really updates; the working copy the forward reads (the
        bit16/fp32 flat groups of ZeRO-1/2, ZeRO-3's `ds_tensor` partitions) is refreshed from them by
        `params_written()`."""
        if self.zero_stage == 0:
            return super().param_pieces()
        return self._masters().masters()

    def params_written(self) -> None:
        """Copy the masters into the working parameters as `step()` does (ZeRO-1/2: into this rank's slice,
        then an all-gather; ZeRO-3: into the partitions, then a re-gather of the persistent parameters)."""
        if self.zero_stage > 0:
            self._masters().refresh_model()

    # -- step --------------------------------------------------------------------------------------------
    def step(self) -> None:
        """Hand u (written into this pass's pieces by the loop) to DeepSpeed and step the master partitions."""
        engine, pieces = self._require_engine()
        pieces.install(self.grads())
        engine.set_gradient_accumulation_boundary(True)
        engine.step()
        self._pass_grads = None

    # -- checkpoints -------------------------------------------------------------------------------------
    def _rank_file(self, rank: int) -> str:
        return f"rank{rank:05d}.safetensors"

    def save_checkpoint(self, root: Path, step: int, extra: dict[str, Any], keep: int = 0) -> Path:
        """ZeRO-0: the single-process format (rank 0). ZeRO-1/2/3: one safetensors file per rank.

        `rankNNNNN.safetensors` holds that rank's fp32 master partitions (`master.<g>`) and the optimizer state
        over them (`optimizer.state.<i>.<name>`; non-tensor entries in the file's metadata); `trainer_state.json`
        (rank 0) holds step, `extra`, world size, stage, the optimizer's param_groups and every rank's torch RNG
        state. Written into a temporary directory that rank 0 renames into place once every rank has written.
        """
        if self.zero_stage == 0:
            return super().save_checkpoint(root, step, {**extra, "zero_stage": 0, "world_size": self.world_size},
                                           keep=keep)
        from safetensors.torch import save_file

        engine, _ = self._require_engine()
        masters = master_state(engine)
        final = step_dir(root, step)
        tmp = root / f".tmp-{final.name}-zero"
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        rng = torch.get_rng_state().to(self.device)  # NCCL gathers device tensors only
        rngs = [torch.empty_like(rng) for _ in range(self.world_size)]
        dist.all_gather(rngs, rng)
        self.barrier()
        tensors = {f"master.{g}": t.detach().contiguous().cpu() for g, t in enumerate(masters.masters())}
        opt_tensors, opt_meta = optimizer_to_tensors(
            types.SimpleNamespace(state_dict=masters.optimizer_state))  # type: ignore[arg-type]
        tensors.update({f"optimizer.{k}": v for k, v in opt_tensors.items()})
        save_file(tensors, str(tmp / self._rank_file(self.rank)),
                  metadata={"optimizer_scalars": json.dumps(opt_meta["scalars"]), "rank": str(self.rank)})
        self.barrier()
        if self.rank == 0:
            state = {
                "step": step,
                "world_size": self.world_size,
                "zero_stage": self.zero_stage,
                "mixed_precision": self.mixed_precision,
                "optimizer": {"param_groups": opt_meta["param_groups"]},
                "deepspeed": {"global_steps": int(engine.global_steps),
                              "global_samples": int(engine.global_samples),
                              "skipped_steps": int(engine.skipped_steps),
                              "loss_scaler": (loss_scaler_state(engine.optimizer)
                                              if self.mixed_precision == "fp16" else None)},
                "torch_rng": [r.cpu().tolist() for r in rngs],
                **extra,
            }
            (tmp / STATE_FILE).write_text(json.dumps(state))
            if final.exists():  # the same step saved by an earlier attempt: replace it
                shutil.rmtree(final)
            tmp.rename(final)
            if keep > 0:
                for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
                    shutil.rmtree(old)
        self.barrier()
        return final

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        """Restore this rank's master partitions and optimizer state, then the model's working parameters."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        engine, _ = self._require_engine()
        directory = Path(directory)
        state_path = directory / STATE_FILE
        if not state_path.is_file():
            raise ConfigError(f"resume: {directory} is not a checkpoint (no {STATE_FILE})")
        state = json.loads(state_path.read_text())
        saved_stage, saved_world = state.get("zero_stage"), state.get("world_size")
        if saved_stage is None or saved_world is None:
            raise ConfigError(f"resume: {directory} was not written by the deepspeed backend (no zero_stage/"
                              "world_size); resume with the backend that wrote it")
        if saved_stage != self.zero_stage or saved_world != self.world_size:
            raise ConfigError(
                f"resume: {directory} was written with zero_stage={saved_stage} on {saved_world} ranks; this run "
                f"has zero_stage={self.zero_stage} on {self.world_size} ranks. ZeRO checkpoints hold per-rank "
                "partitions and resume only with the same stage and world size"
            )
        if self.zero_stage == 0:
            return super().load_checkpoint(directory)
        if state.get("mixed_precision") != self.mixed_precision:
            raise ConfigError(f"resume: {directory} was written with mixed_precision="
                              f"{state.get('mixed_precision')!r}, this run has {self.mixed_precision!r}")
        masters = master_state(engine)
        path = directory / self._rank_file(self.rank)
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            scalars = json.loads(f.metadata()["optimizer_scalars"])
        current = masters.masters()
        for g, t in enumerate(current):
            saved = tensors.get(f"master.{g}")
            if saved is None or saved.shape != t.shape:
                raise ConfigError(
                    f"resume: {path} master partition {g} has shape "
                    f"{None if saved is None else tuple(saved.shape)}, this run's is {tuple(t.shape)} (a different "
                    "model, parameter grouping or ZeRO config)")
        if sum(k.startswith("master.") for k in tensors) != len(current):
            raise ConfigError(f"resume: {path} holds a different number of master partitions than this run")
        with torch.no_grad():
            for g, t in enumerate(current):
                t.copy_(tensors[f"master.{g}"].to(device=t.device, dtype=t.dtype))
        # torch's load_state_dict moves state to each parameter's device itself (and keeps `step` where it wants)
        opt_tensors = {k.removeprefix("optimizer."): v for k, v in tensors.items() if k.startswith("optimizer.")}
        optimizer_from_tensors(types.SimpleNamespace(load_state_dict=masters.load_optimizer_state),  # type: ignore[arg-type]
                               opt_tensors, {"param_groups": state["optimizer"]["param_groups"],
                                             "scalars": scalars})
        masters.refresh_model()
        counters = state.get("deepspeed", {})
        engine.global_steps = counters.get("global_steps", engine.global_steps)
        engine.global_samples = counters.get("global_samples", engine.global_samples)
        engine.skipped_steps = counters.get("skipped_steps", engine.skipped_steps)
        if self.mixed_precision == "fp16":  # else the scale restarts at 2^16 and re-learns its overflows
            if not counters.get("loss_scaler"):
                raise ConfigError(f"resume: {state_path} has no fp16 loss-scaler state")
            restore_loss_scaler(engine.optimizer, counters["loss_scaler"])
        torch.set_rng_state(torch.tensor(state["torch_rng"][self.rank], dtype=torch.uint8))
        self.barrier()
        return state
