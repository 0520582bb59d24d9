# Fresh-machine entry points: `make demo` (the main job) and `make test`.
# Both create .venv on first use and install the project from pyproject.toml.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed before the project so that no resolver pulls a second multi-GB build.
# Override for another build, e.g. TORCH_SPEC="torch torchvision --index-url <your CUDA index>".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo demo-data compare test lint bench clean slurm-deps

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

# The embedded demo: synthetic data -> shards -> 2-process CPU training -> evaluation table.
# Everything it writes is under data/demo, shards/out/demo and runs/demo (cleared first).
DEMO_LAUNCH := ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 $(BIN)/accelerate launch --multi_gpu \
	--num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no
demo: install
	rm -rf data/demo shards/out/demo runs/demo
	$(BIN)/python train/check_body_model.py --out runs/demo/body_check
	$(MAKE) demo-data
	$(DEMO_LAUNCH) train/train.py --config configs/demo.yaml
	$(BIN)/python train/evaluate.py --run runs/demo --baseline --require-gain 0.2
	$(BIN)/python train/show_run.py runs/demo

# The demo's synthetic data and shards (no training): data/demo and shards/out/demo.
demo-data: install
	$(BIN)/python shards/make_synthetic.py 3dpw --out data/demo/3dpw --sequences 640 --frames 2 --split-ratio 3 1 0 --size 270 480 --no-progress
	$(BIN)/python shards/make_synthetic.py mpii --out data/demo/mpii --images 80 --image-scale 0.5 --eft --no-progress
	$(BIN)/python shards/pack_3dpw.py --root data/demo/3dpw --split train --out shards/out/demo/3dpw/train --workers 2 --no-progress
	$(BIN)/python shards/pack_3dpw.py --root data/demo/3dpw --split validation --out shards/out/demo/3dpw/validation --workers 2 --no-progress
	$(BIN)/python shards/pack_mpii.py --root data/demo/mpii --split train --out shards/out/demo/mpii/train --eft data/demo/mpii/MPII_ver01.json --workers 2 --no-progress
	$(BIN)/python shards/verify.py shards/out/demo/3dpw/train shards/out/demo/3dpw/validation shards/out/demo/mpii/train
	$(BIN)/python train/mean_params.py --out data/demo/mean_params.npz shards/out/demo/3dpw/train shards/out/demo/mpii/train

# The vanilla-versus-self-attention experiment on the demo's shards (about 15 minutes on 2 cores).
compare: install
	test -f data/demo/mean_params.npz || $(MAKE) demo-data
	ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 $(BIN)/python train/compare.py \
		--config configs/demo.yaml --config configs/compare_cpu.yaml --processes 2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The SLURM job-script tests run a real two-node cluster on localhost from Debian's packages
# (and shellcheck the scripts): installed here when missing and we are root (as on CI);
# otherwise those tests are skipped.
SLURM_PROGRAMS := slurmctld slurmd sbatch munged shellcheck
slurm-deps:
	@if [ "$$(command -v $(SLURM_PROGRAMS) | wc -l)" -eq 5 ]; then \
		true; \
	elif [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			slurmd slurmctld slurm-client munge shellcheck >/dev/null; \
	else \
		echo "note: SLURM/munge not installed and not root: the SLURM tests will be skipped"; \
	fi

test: lint slurm-deps
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_render.py
	$(BIN)/python benchmarks/bench_pack.py
	$(BIN)/python benchmarks/bench_loader.py
	$(BIN)/python benchmarks/bench_model.py

clean:
	rm -rf $(VENV) runs benchmarks/results .pytest_cache .ruff_cache
