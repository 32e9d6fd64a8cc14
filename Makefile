# Two commands do all the set-up on a fresh machine (see README):
#   make demo   - create .venv if missing, install, run the whole job offline on the embedded data
#   make test   - create .venv if missing, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN_DIR ?= runs/demo
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test browser lint-docker docker-smoke clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: the local CPU wheel. Any other spec pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/job run --run-dir $(RUN_DIR)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

browser:  # Debian's headless Chromium + driver for the `rag-eval serve` browser tests (root; .ci/run does this)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update && apt-get install -y chromium chromium-driver; }

lint-docker: $(STAMP)   # also part of `make test` (tests/test_dockerfile.py)
	$(VENV)/bin/hadolint Dockerfile

docker-smoke: $(STAMP)  # root; builds the image on its own dockerd, runs it like SageMaker and through the SDK's local mode (~15 min)
	scripts/docker_smoke.sh

clean:
	rm -rf runs .pytest_cache
