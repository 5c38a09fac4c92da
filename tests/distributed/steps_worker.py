"""One rank of `test_steps_backends.py`: `python steps_worker.py RUNS_JSON OUT_DIR` (torchrun's environment).

RUNS_JSON is a list of `{"tag": str, "backend": str, "kwargs": {...}, "method": "ofmu" | "adaptive" | "hvp",
"micro": int | null}` plus optional `"resume_after"`; `step_runs.one_run` says what each does. Results go to
OUT_DIR/<tag>_rank<r>.pt; a run that raises is recorded in OUT_DIR/<tag>_rank<r>.error.txt and ends the worker
(`dist_harness.isolated_run`), and the launcher reruns the runs after it in fresh processes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from dist_harness import isolated_run, save_run, worker_session
from step_runs import one_run
from worker import full_parameters

from unlearn.train.backend import BACKENDS


def main() -> None:
    runs, out_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    with worker_session():
        for run in runs:
            print(f"[worker] run {run['tag']}", flush=True)
            with isolated_run(run["tag"], out_dir):
                result = one_run(lambda run=run: BACKENDS.build(run["backend"], **run["kwargs"]), run, out_dir,
                                 full_parameters)
                import torch.distributed as dist

                save_run(result, out_dir, run["tag"], dist.get_rank())


if __name__ == "__main__":
    main()
