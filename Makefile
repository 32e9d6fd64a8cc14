# Two commands do all the set-up on a fresh machine (see README):
#   make demo   - create .venv if missing, install the locked versions, run the whole job offline on the embedded data
#   make test   - create .venv if missing, install the locked versions, run the test suite
# make lock refreshes requirements/*.lock on purpose (newest releases within pyproject.toml's ranges).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_SPEC ?= torch==2.13.0
RUN_DIR ?= runs/demo
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lock browser lint-docker docker-smoke clean

# -qq: errors only (pip's notes about this machine's package mirrors and setuptools' editable-install notice
# are not the project's output).
PIP := PYTHONWARNINGS=ignore $(PY) -m pip install -qq

$(STAMP): pyproject.toml requirements/dev.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup: pip, then $(TORCH_SPEC) (the CPU wheel: any other spec pulls a multi-GB CUDA build)"
	@$(PIP) --upgrade pip
	@$(PIP) $(TORCH_SPEC)
	@echo "setup: the locked versions of requirements/dev.lock, every file checked against its SHA-256 (llama-cpp-python compiles: ~5 min)"
	@$(PIP) --require-hashes -r requirements/dev.lock
	@$(PIP) --no-deps -e .
	@touch $(STAMP)
	@echo "setup: done ($(VENV))"

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/job run --run-dir $(RUN_DIR)

lock:  # refresh requirements/*.lock: a fresh venv with the newest releases in pyproject.toml's ranges (~5 min)
	$(PYTHON) scripts/lock.py

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
