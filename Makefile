# Set up, test and run `unlearn`. Everything runs offline: the hub is never contacted.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE := offline
export TOKENIZERS_PARALLELISM := false
# Idle OpenMP threads sleep instead of spinning: on 2 shared cores spinning slowed small-model training 5-10x.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup test test-slow test-distributed lint demo table worlds reproduce-tables reproduce-tables-quick bench regime clean-outputs

# torch first, by exact version (a CPU wheel; letting pip resolve it pulls a multi-GB CUDA build), then
# DeepSpeed without build isolation (its build imports torch), then the package with every extra.
setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-build-isolation deepspeed==0.19.8
	$(BIN)/pip install --quiet -e ".[dev,dist,logging,sweep]"
	$(BIN)/python -c "import torch, transformers, deepspeed; print('torch', torch.__version__, '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__)"

# The default suite: unit, integration and distributed (2-process gloo) tests; slow end-to-end checks excluded.
test:
	$(BIN)/python -m pytest -q

# Slower end-to-end checks (default-size models, full method grid on a small world).
test-slow:
	$(BIN)/python -m pytest -q -m slow

test-distributed:
	$(BIN)/python -m pytest -q -m distributed

lint:
	$(BIN)/ruff check unlearn tests experiments

# The main job on the embedded default: BLUR-NPO on tofu_mini forget10 (builds and caches models on first use).
demo:
	$(BIN)/python -m unlearn.run method=blur_npo benchmark=tofu_mini benchmark.forget_split=forget10

# Every method x forget05/forget10 x 3 seeds on tofu_mini; writes outputs/tables/tofu_mini.md (README table).
table:
	$(BIN)/python -m experiments.tofu_mini_table

# The paper's tables and figures on the embedded worlds: TOFU (tofu_mini, 1 development + 3 held-out worlds x 3
# seeds, paper settings and equal-budget tuned rows, relearning attack), MUSE (muse_mini) and WMDP (wmdp_mini) over
# 3 worlds: outputs/report/REPORT.md. Two runs at a time (experiments/grid.py). Resumable: finished runs are skipped,
# never redone or overwritten. The quick version (micro worlds) writes outputs/report-quick/.
# Builds every embedded world model the full protocol needs (cached; reproduce-tables builds what is missing too,
# so this only splits the one-off build cost from the runs' cost).
worlds:
	$(BIN)/python -m experiments.reproduce --prepare-only --jobs 2

reproduce-tables:
	$(BIN)/python -m experiments.reproduce --jobs 2

reproduce-tables-quick:
	$(BIN)/python -m experiments.reproduce --quick --jobs 2

# Step time and peak memory of every method vs GradDiff, loop throughput vs a bare loop, full tofu_mini eval time;
# writes outputs/bench/bench.json + bench.md (archived per run under outputs/bench/runs/). CUDA adds a 1B section.
bench:
	$(BIN)/python -m experiments.bench

# Do the embedded worlds behave like the real benchmarks? NPO/BLUR-NPO/GradDiff/GA trajectories over 3 worlds;
# writes outputs/regime/regime.json + regime.png and fails if a required property does not hold.
regime:
	$(BIN)/python -m experiments.regime

clean-outputs:
	@echo "outputs/ holds finished runs; remove it by hand if you really mean to."
