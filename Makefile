# kdlaunch: the two commands of the README are `make demo` and `make test`.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env demo demo-assets test test-fast cluster cluster-stop lint format golden

env:  ## create/refresh the virtualenv (.venv) with the pinned CPU stack
	scripts/setup_env.sh

demo: env  ## the embedded default: the whole pipeline on this machine, CPU, tiny models
	$(PY) -m assets.demo .cache/demo
	$(PY) launch/distill.py --cluster local --config tiny_demo --run-dir runs/demo

test: env cluster  ## every CPU test, SLURM ones included (starts the test cluster); 2 workers
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=25

test-fast: env  ## the unit tier: pure logic and the fake scheduler (no cluster, no model work)
	$(PY) -m pytest -q -n 2 -m unit

cluster:  ## start (or check) the local SLURM test cluster
	scripts/slurm/start_cluster.sh

cluster-stop:
	scripts/slurm/stop_cluster.sh

lint:
	$(PY) -m ruff check .

format:
	$(PY) -m ruff check --fix .

golden:  ## re-record golden files (sbatch text, report tables) after an intended change
	KD_UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/launch tests/report -m "not slurm"
