# Two commands do all the set-up on a fresh machine (see README):
#   make demo   - create .venv if missing, install requirements/runtime.lock (what the demo and rag-eval need),
#                 run the whole job offline on the embedded data
#   make test   - create .venv if missing, install requirements/dev.lock (runtime.lock + the test tools), run the tests
# Either order works: runtime.lock is a part of dev.lock (same versions, same hashes), so `make demo` then
# `make test` adds the dev packages to the same .venv, and `make test` then `make demo` installs nothing.
# make lock refreshes requirements/*.lock on purpose (newest releases within pyproject.toml's ranges).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# requirements/dev.lock installed (make setup / test), requirements/runtime.lock installed (make demo)
STAMP := $(VENV)/.installed-stamp
RUNTIME_STAMP := $(VENV)/.runtime-stamp
TORCH_SPEC ?= torch==2.13.0
RUN_DIR ?= runs/demo
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lock browser docs-images lint-docker docker-smoke clean

# -qq: errors only (pip's notes about this machine's package mirrors and setuptools' editable-install notice
# are not the project's output).
PIP := PYTHONWARNINGS=ignore $(PY) -m pip install -qq

# $(call install,LOCK,NOTE): .venv if missing, pip, torch on its own, LOCK (every file checked against its
# SHA-256), then this package without dependencies. pip keeps what is already installed at the locked version.
define install
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup: pip, then $(TORCH_SPEC) (the CPU wheel: any other spec pulls a multi-GB CUDA build)"
	@$(PIP) --upgrade pip
	@$(PIP) $(TORCH_SPEC)
	@echo "setup: the locked versions of $(1), every file checked against its SHA-256$(2)"
	@$(PIP) --require-hashes -r $(1)
	@$(PIP) --no-deps -e .
endef

# The dev lock holds the runtime lock: installing it brings the runtime stamp up to date too.
$(STAMP): pyproject.toml requirements/dev.lock
	$(call install,requirements/dev.lock, (llama-cpp-python compiles: ~5 min))
	@touch $(RUNTIME_STAMP) $(STAMP)
	@echo "setup: done ($(VENV))"

$(RUNTIME_STAMP): pyproject.toml requirements/runtime.lock
	$(call install,requirements/runtime.lock, (no test tools: \`make test\` adds requirements/dev.lock))
	@touch $(RUNTIME_STAMP)
	@echo "setup: done ($(VENV))"

setup: $(STAMP)

demo: $(RUNTIME_STAMP)
	$(VENV)/bin/job run --run-dir $(RUN_DIR)

lock:  # refresh requirements/*.lock: a fresh venv with the newest releases in pyproject.toml's ranges (~5 min)
	$(PYTHON) scripts/lock.py

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

browser:  # Debian's headless Chromium + driver for the `rag-eval serve` browser tests (root; .ci/run does this)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update && apt-get install -y chromium chromium-driver; }

# docs/serve.png from the demo run: runs `make demo`'s job, `rag-eval index` and `score` if missing, starts
# `rag-eval serve` on 127.0.0.1, screenshots it in headless Chromium (`make browser`), stops it by its PID; the
# picture is replaced only when the page shows model names (no file paths) and the README table's numbers.
docs-images: $(STAMP)
	$(PY) scripts/docs_images.py --run-dir $(RUN_DIR)

lint-docker: $(STAMP)   # also part of `make test` (tests/test_dockerfile.py)
	$(VENV)/bin/hadolint Dockerfile

docker-smoke: $(STAMP)  # root; builds the image on its own dockerd, runs it like SageMaker and through the SDK's local mode (~15 min)
	scripts/docker_smoke.sh

clean:
	rm -rf runs .pytest_cache
