"""Hydra entry point: `python -m unlearn.run method=blur_npo benchmark=tofu_mini`.

Composes the config groups under `configs/`, then hands the resolved config to `unlearn.pipeline`. A bad
config exits with one line naming the offending key, before anything is loaded or trained.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from unlearn.config import register_resolvers
from unlearn.errors import ConfigError, DataError

register_resolvers()


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from unlearn.pipeline import run_experiment  # heavy imports after Hydra has parsed the command line
    from unlearn.sweep import finished_summary, set_aside_incomplete

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = finished_summary(run_dir) if cfg.get("skip_finished") else None
    try:
        if summary is not None:  # a re-run sweep: this job finished before; nothing is redone or overwritten
            print(f"[unlearn] {run_dir}: finished (summary.json), skipping (skip_finished=true)")
        else:
            if cfg.get("skip_finished") and not cfg.get("resume"):
                aside = set_aside_incomplete(run_dir)
                if aside is not None:
                    print(f"[unlearn] {run_dir}: an unfinished attempt's outputs moved to {aside}")
            # No progress bars in multirun jobs (parallel launchers interleave them).
            summary = run_experiment(cfg, run_dir, progress=False if HydraConfig.get().mode == RunMode.MULTIRUN
                                     else None)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    # Returned for Hydra sweepers that optimise a metric (`optimize_metric`, a benchmark default).
    metric = cfg.get("optimize_metric")
    return None if metric is None or not summary else summary.get(metric)


def leave_process_group() -> None:
    """Under a launcher, leave the process group before the interpreter exits (every rank has passed the run's
    final barrier by then). A group destructed at shutdown makes NCCL warn and can hang it, and with gloo a
    still-running thread destroyed at exit aborted rank 0 ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    finally:
        leave_process_group()
