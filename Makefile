# Fresh-machine entry points: `make demo` (the main job) and `make test`.
# Both create .venv on first use and install the project from pyproject.toml.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed before the project so that no resolver pulls a second multi-GB build.
# Override for another build, e.g. TORCH_SPEC="torch torchvision --index-url <your CUDA index>".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python train/check_body_model.py
	$(BIN)/python shards/make_synthetic.py 3dpw --out data/synthetic/3dpw --sequences 3 --frames 30 --size 270 480
	$(BIN)/python shards/make_synthetic.py mpii --out data/synthetic/mpii --images 60 --image-scale 0.5 --eft
	$(BIN)/python shards/pack_3dpw.py --root data/synthetic/3dpw --split train --out shards/out/3dpw/train --workers 2
	$(BIN)/python shards/pack_3dpw.py --root data/synthetic/3dpw --split validation --out shards/out/3dpw/validation --workers 2
	$(BIN)/python shards/pack_mpii.py --root data/synthetic/mpii --split train --out shards/out/mpii/train --eft data/synthetic/mpii/MPII_ver01.json --workers 2
	$(BIN)/python shards/verify.py shards/out/3dpw/train shards/out/3dpw/validation shards/out/mpii/train

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_render.py
	$(BIN)/python benchmarks/bench_pack.py
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/model.py

clean:
	rm -rf $(VENV) runs benchmarks/results .pytest_cache .ruff_cache
