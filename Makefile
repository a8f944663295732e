# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv and installs what it needs. torch==2.13.0 is the CPU build on this machine's
# local disk; elsewhere pip fetches the build for your platform.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The course data: ../shared here and in CI; `tangpoem data fetch` downloads it anywhere else.
SHARED_DATA := $(abspath ../shared/data/GenAI-Hw5)
export TANGPOEM_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)/Tang_training_data.json),$(SHARED_DATA),$(abspath data/GenAI-Hw5))

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools<81" wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(STAMP)
	@test -f $(TANGPOEM_DATA_DIR)/Tang_training_data.json || $(VENV)/bin/tangpoem data fetch
	$(VENV)/bin/tangpoem demo

test: $(STAMP)
	@scripts/install_system_deps.sh
	@# undefined names and unused imports (pyflakes' checks) in every Python file and notebook, scripts no test runs included
	$(PY) -m ruff check -q --select F tangpoem benchmarks tests scripts notebooks
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) outputs .pytest_cache
