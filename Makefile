# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.galparam-installed

.PHONY: demo test test-fast system-packages bench bench-denoise bench-peers bench-device bench-posterior bench-losses lint format clean reproduce gpu-study

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,jax]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m galparam.demo

# Everything CI runs: the unit tests, the demo end to end, the notebooks, the browser checks, then the
# backend-dependent tests again on Keras's JAX backend (<= 20 min on 2 cores; ~13 measured). The tests
# run on TEST_WORKERS processes, a test file each (the demo and its notebooks on one while the rest
# run on the other): most of a test's time is one core's (processes starting, drawing, fitting).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
test: $(STAMP) system-packages
	$(PYTEST) tests
	KERAS_BACKEND=jax $(PYTEST) -m backends tests

# The unit level, for the development loop (<= 5 min): no demo, notebooks, distributed tuner, AutoKeras, browser or GPU study.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" tests

# Debian's chromium and chromium-driver for the browser checks, installed when missing.
system-packages:
	@scripts/system-packages

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_simulate.py
	$(BIN)/python benchmarks/bench_evaluate.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_refine.py
	$(BIN)/python benchmarks/bench_backends.py
	$(BIN)/python benchmarks/bench_measure.py

# The full-scale study on one GPU in under 9 minutes (Keras on JAX, no TensorFlow or GalSim needed there):
# docs/gpu-study.md. OUT is the folder for its tables; GPU_STUDY_FLAGS=--toy runs it at toy size on a CPU.
# On a machine without .venv (a borrowed GPU): make gpu-study GPU_STUDY_PYTHON=python3 (nothing is installed).
OUT ?= gpu-study
GPU_STUDY_PYTHON ?= $(BIN)/python
# Denoise, then measure: hours on 2 CPU cores at its default 20,000 images, minutes on a GPU
# the device paths (fits, bounds, prediction, drawing on Keras's JAX backend) beside the numpy paths, one run
bench-device: $(STAMP)
	KERAS_BACKEND=jax $(BIN)/python benchmarks/bench_device.py $(BENCH_DEVICE_FLAGS)

# posteriors: calibration on 2,000 prior draws of v2 and v3 (and each block of 500), the Laplace check, the
# Bayes risk at the test galaxies from 1,000 posteriors each, speed, the intervals' tails (about 50 minutes on 2 cores;
# resumable): docs/posterior.md
POSTERIOR_OUT ?= bench-posterior
bench-posterior: $(STAMP)
	$(BIN)/python benchmarks/bench_posterior.py --out $(POSTERIOR_OUT) $(BENCH_POSTERIOR_FLAGS)

# training toward the floor: needs bench-posterior's posteriors (v2 draws and the test galaxies)
# LOSSES_POSTERIORS: the prior draws' posteriors the cells' Bayes risk comes from (more images: smaller
# cells' errors; e.g. galparam-evaluate posterior of a 3,000-image v2 draw)
LOSSES_OUT ?= bench-losses
LOSSES_POSTERIORS ?= $(POSTERIOR_OUT)/v2-2000.posterior.csv
bench-losses: $(STAMP)
	$(BIN)/python benchmarks/bench_losses.py --out $(LOSSES_OUT) --posteriors $(LOSSES_POSTERIORS) \
		--test-sets $(POSTERIOR_OUT)/test_snr60-1000.npz $(POSTERIOR_OUT)/test_snr30-1000.npz \
		--test-posteriors $(POSTERIOR_OUT)/test_snr60-1000-v2prior.posterior.csv \
		$(POSTERIOR_OUT)/test_snr30-1000-v2prior.posterior.csv $(BENCH_LOSSES_FLAGS)

DENOISE_OUT ?= bench-denoise
bench-denoise: $(STAMP)
	$(BIN)/python benchmarks/bench_denoise.py $(DENOISE_OUT) $(BENCH_DENOISE_FLAGS)

# galparam beside pysersic and AstroPhot (their own environment, bench-peers/.venv, installed from PyPI on
# first use; about an hour on 2 cores at 200 stamps a geometry, ~10 minutes more for 8 posteriors beside
# pysersic's NUTS): docs/measure.md, docs/posterior.md
bench-peers: $(STAMP)
	$(BIN)/python benchmarks/bench_peers.py $(BENCH_PEERS_FLAGS)

gpu-study: $(if $(filter $(BIN)/python,$(GPU_STUDY_PYTHON)),$(STAMP))
	KERAS_BACKEND=$${KERAS_BACKEND:-jax} $(GPU_STUDY_PYTHON) benchmarks/gpu_study.py $(OUT) $(GPU_STUDY_FLAGS)

# ruff, then the layers (import-linter's contracts in pyproject.toml: an import that runs up a layer
# fails) and galparam's own modules imported at module level only (scripts/check_imports.py).
lint: $(STAMP)
	$(BIN)/ruff format --check galparam tests benchmarks notebooks scripts
	$(BIN)/ruff check galparam tests benchmarks notebooks scripts
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/check_imports.py galparam

format: $(STAMP)
	$(BIN)/ruff format galparam tests benchmarks notebooks scripts
	$(BIN)/ruff check --fix galparam tests benchmarks notebooks scripts

# The reference's study at full scale, for a machine with a GPU (the README gives each step's expected
# time). Every step resumes when run again: `make reproduce` after an interruption continues.
FULL_DATA := v1 v2 v3 test_snr60 test_snr30
FULL_RUNS := xception-v1-noiseless xception-v1 xception-v2 xception-v3 autoencoder-v1 autoencoder-v2 autoencoder-v3
JOBS ?= $(shell nproc)
FITS := runs/full/fits
FIT_IMAGES ?= 1000

data/%.npz: data/%.yaml | $(STAMP)
	$(BIN)/galparam-simulate run $< --jobs $(JOBS)

reproduce: $(STAMP) $(FULL_DATA:%=data/%.npz)
	$(BIN)/galparam-search autokeras experiments/search/autokeras-v1.yaml
	$(BIN)/galparam-search grid experiments/search/grid-v1.yaml
	$(BIN)/galparam-search tune experiments/search/tune-v1.yaml
	for s in autokeras-v1 grid-v1 tune-v1; do $(BIN)/galparam-search dashboard experiments/search/$$s-results || exit 1; done
	for e in $(FULL_RUNS); do $(BIN)/galparam-train run experiments/$$e.yaml --resume || exit 1; done
	for snr in 60 30; do \
	    $(BIN)/galparam-evaluate baseline data/test_snr$$snr.npz --n-images $(FIT_IMAGES) --jobs $(JOBS) \
	        -o $(FITS)/baseline-snr$$snr.csv || exit 1; \
	    $(BIN)/galparam-evaluate baseline data/test_snr$$snr.npz --n-images $(FIT_IMAGES) --jobs $(JOBS) \
	        --init runs/xception-v2 -o $(FITS)/refined-xception-v2-snr$$snr.csv || exit 1; \
	done
	$(BIN)/galparam-evaluate report --runs $(FULL_RUNS:%=runs/%) --test-sets data/test_snr60.npz data/test_snr30.npz \
	    --fits $(FITS)/*.csv -o reports/full

clean:
	rm -rf runs reports bench-results data/*.npz data/*.csv data/*.parts experiments/search/*-results
