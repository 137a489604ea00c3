# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# A second environment with JAX and no TensorFlow (requirements-jax.txt says why it is separate).
VENV_JAX := .venv-jax
PY_JAX := $(VENV_JAX)/bin/python
STAMP_JAX := $(VENV_JAX)/.installed-stamp
# JAX's compiled programs, shared by the test processes (invkeras.distribution.enable_compilation_cache).
JAX_CACHE := $(CURDIR)/.jax-cache
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install install-jax browser demo test bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install-jax: $(STAMP_JAX)

$(STAMP_JAX): requirements-jax.txt pyproject.toml
	$(PYTHON) -m venv $(VENV_JAX)
	$(PY_JAX) -m pip install --quiet --upgrade pip
	$(PY_JAX) -m pip install --quiet -r requirements-jax.txt
	$(PY_JAX) -m pip install --quiet --no-deps -e .
	touch $(STAMP_JAX)

# The demo: train a classifier on the embedded procedural dataset and inspect it (recipes/demo.yaml).
demo: install
	$(VENV)/bin/invkeras run recipes/demo.yaml
	@echo "The demo's report: $(CURDIR)/runs/procedural/inspect/report.html"

# The main suite (TensorFlow; tests/jax_subset skips there, tests/test_cross_backend.py calls into
# .venv-jax), then the JAX subset in .venv-jax, a file per worker on two workers (its tests are
# mostly XLA compiling, which keeps one core busy). Catalogue names (mnist, cifar10) read the offline
# copies in ../shared/data when the checkout has them beside it (empty, i.e. unset, otherwise).
test: export INVKERAS_DATA_DIR ?= $(wildcard $(CURDIR)/../shared/data)
test: install install-jax browser
	INVKERAS_JAX_CACHE=$(JAX_CACHE) $(PY) -m pytest -q tests
	INVKERAS_JAX_CACHE=$(JAX_CACHE) KERAS_BACKEND=jax $(PY_JAX) -m pytest -q -n 2 --dist loadfile tests/jax_subset

# Headless Chromium checks the HTML report as a browser shows it (Debian's package, as root);
# where it cannot be installed, that test says so and skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "note: chromium not installed; the browser test of the report will skip"

bench: install install-jax
	$(PY) benchmarks/bench.py --jax-python $(PY_JAX)

# On a CUDA machine with JAX (see benchmarks/gpu_check.sh); GPU_CHECK_ARGS passes options.
gpu-check:
	bash benchmarks/gpu_check.sh run $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(VENV_JAX) $(JAX_CACHE) runs
