# Each target bootstraps .venv (python3 -m venv + pip install -e '.[dev]') when it is missing or stale.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Extra pytest arguments, e.g. PYTEST_ARGS="-n 4 --dist loadgroup" (pytest-xdist: see README, Parallel runs)
PYTEST_ARGS ?=
# The pitch estimators whose shipped trained weights the tests use; pins mirror rvc_mlx/testing/packages.py.
# --no-deps: they require torchaudio, which cannot load with torch 2.13 (a stand-in is registered instead).
REFERENCE_PACKAGES := torchcrepe==0.0.24 torchfcpe==0.0.4

.PHONY: test parity baseline golden bench precision install clean

# pip byte-compiles every installed module one at a time (torch's thousands: 70 of a fresh install's 153 s);
# compileall does it on every core (34 s), but for what no test imports: transformers' other 550 models (a fifth
# of the whole) and torch's test suite. Its errors are a few third-party files written for newer Pythons, which
# pip skips too.
PIP := $(PY) -m pip install -q --disable-pip-version-check --no-compile
COMPILE_SKIP := /transformers/models/(?!__init__|auto/|hubert/|wav2vec2/|encoder_decoder/)|/torch/testing/_internal/
# librosa compiles its numba kernels on first import (15 s here) and caches them in the venv: done once while
# compileall runs, not in both test workers and every CLI run that starts before the cache exists
WARM_NUMBA := import librosa.core.audio, librosa.sequence

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	@sh tools/ensure-openblas.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps $(REFERENCE_PACKAGES)
	$(PY) -c "$(WARM_NUMBA)" > /dev/null 2>&1 & \
	$(PY) -m compileall -q -j 0 -x '$(COMPILE_SKIP)' $(VENV)/lib > /dev/null 2>&1; wait
	touch $@

install: $(STAMP)

# The CI suite: harness unit tests, parity of every component vs golden, pipeline tests. Two xdist workers with
# one math thread each (PYTEST_ARGS="-n 0": one process): on 2 cores, one process leaves a core idle through most
# of its Python, twin and small-array work. A second worker costs memory, not speed: each keeps at most 256 MiB of
# MLX's freed buffers and releases its models above half the plugin's bound.
TEST_ENV := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 RVC_MLX_CACHE_LIMIT=268435456
test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -n 2 -m "not slow" --benchmark-disable $(PYTEST_ARGS)

# Everything in `test`, plus the live float64 oracle with teacher forcing, a spot check of the benchmarks (1 s and
# 10 s, each timed once) and the HTML report; `make bench` takes medians of 3 at 1, 10 and 60 s and the op-class
# profile. The benchmarks run first, alone (their timings need the machine); then the rest on two workers.
parity: $(STAMP)
	@sh tools/ensure-chromium.sh
	mkdir -p reports
	$(PY) -m pytest tests/bench -m "not long_bench" --bench-spot-check --benchmark-json reports/bench.json \
		$(PYTEST_ARGS)
	$(TEST_ENV) $(PY) -m pytest -n 2 --ignore=tests/bench --report reports/parity.json \
		--bench-results reports/bench.json $(if $(wildcard reports/baseline.json),--fail-on-drift 2) $(PYTEST_ARGS)

# Accept the last `make parity` run as the baseline that later runs report drift against.
baseline:
	@test -f reports/parity.json || { echo "make baseline: no reports/parity.json; run make parity first"; exit 2; }
	cp reports/parity.json reports/baseline.json

# Regenerate golden files after an intentional change (atomic; refused when CI is set). Cases whose float64 oracle
# did not change keep their files and recorded torch float32 errors; REFRESH_ERRORS=1 re-measures those errors.
golden: $(STAMP)
	$(PY) -m pytest tests/parity -m "parity and not slow" --regen-golden --benchmark-disable \
		$(if $(REFRESH_ERRORS),--refresh-errors) $(PYTEST_ARGS)

# MLX vs torch speed of every component at 1/10/60 s; prints the ratio table saved in reports/bench.json.
bench: $(STAMP)
	mkdir -p reports
	$(PY) -m pytest tests/bench --benchmark-only --benchmark-json reports/bench.json -q
	$(PY) -m rvc_mlx.testing.bench reports/bench.json

# Precision study: float16 / bfloat16 / mixed-precision plans of every component vs the float64 oracle; prints and
# saves reports/precision.{json,html} and writes the plans to golden/precision.toml (SUBJECTS=hubert,rmvpe: a subset;
# DTYPES=float16: one dtype, the other's plans kept; two such runs in parallel, then --combine their JSON).
precision: $(STAMP)
	mkdir -p reports
	$(PY) -m rvc_mlx.testing.precision_report $(if $(SUBJECTS),--subjects $(SUBJECTS)) $(if $(DTYPES),--dtypes $(DTYPES))

clean:
	rm -rf $(VENV) reports/*.json reports/*.html .pytest_cache
