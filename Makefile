# patchcli: `make demo` runs a real extraction on synthetic data, `make test` runs the tests.
# Both set up a virtual environment in .venv first (torch pinned: an unpinned
# torch pulls several GB of CUDA packages).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

.PHONY: install demo test bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/patchcli phantom demo/data --subjects 4 --overwrite
	$(BIN)/patchcli uniform configs/uniform.yaml --dry-run
	$(BIN)/patchcli uniform configs/uniform.yaml --overwrite
	$(BIN)/patchcli weighted configs/weighted.yaml --overwrite
	$(BIN)/patchcli label configs/label.yaml --overwrite
	$(BIN)/patchcli grid configs/grid.yaml --overwrite
	$(BIN)/patchcli label configs/preprocess.yaml --dry-run
	$(BIN)/patchcli label configs/preprocess.yaml --overwrite
	$(BIN)/patchcli label configs/augment.yaml --overwrite
	$(BIN)/patchcli volumes configs/volumes.yaml --overwrite
	$(BIN)/patchcli grid configs/grid.yaml --format nifti --output demo/out/grid_nifti --overwrite
	rm -rf demo/out/cluster
	$(BIN)/patchcli submit label configs/cluster.yaml --shards 2 --time 00:30:00 --dry-run
	$(BIN)/patchcli label configs/cluster.yaml --shard 0/2
	$(BIN)/patchcli label configs/cluster.yaml --shard 1/2
	$(BIN)/patchcli merge demo/out/cluster/patches.h5
	$(BIN)/patchcli info demo/out/cluster/patches.h5
	$(BIN)/patchcli preview configs/label.yaml --sampler label -o demo/out/label-preview.png --overwrite
	$(BIN)/patchcli preview demo/out/augmented.h5 -o demo/out/augmented-copy1.png --copy 1 --overwrite
	$(BIN)/patchcli aggregate demo/out/grid.h5 --image t1 --output-dir demo/out/volumes --overwrite
	$(BIN)/patchcli queue-sim configs/queue-sim.yaml --trace demo/out/trace.csv --plot demo/out/queue.png --overwrite
	$(BIN)/patchcli memory configs/memory.yaml

test: install
	$(BIN)/python -m pytest -q

bench: install
	mkdir -p bench/results
	$(BIN)/python bench/bench_extract.py --out-json bench/results/extract.json --plot bench/results/extract-memory.png
	$(BIN)/python bench/bench_reader.py --patches 2000 --workers 0 2 --batch-size 32 --out-json bench/results/reader.json
	$(BIN)/python bench/bench_queue.py --workdir /dev/shm --out-json bench/results/queue.json
	$(BIN)/python bench/bench_merge.py --shards 1000 --out-json bench/results/merge.json
	$(BIN)/python bench/bench_preprocess.py --out-json bench/results/preprocess.json
	$(BIN)/pip install --quiet pybids    # the side-by-side of bench_layouts only
	$(BIN)/python bench/bench_layouts.py --out-json bench/results/layouts.json
	$(BIN)/python bench/bench_volumes.py --out-json bench/results/volumes.json

lint: install
	$(BIN)/ruff check patchcli tests bench

clean:
	rm -rf demo bench/results .pytest_cache
