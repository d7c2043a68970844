# Two commands set up a fresh machine: `make run` and `make test`. Each creates .venv when it is
# missing and (re)installs the project when its build files changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.tapeout-installed
BUILD_INPUTS := pyproject.toml setup.py examples/vendor-plugin/pyproject.toml $(wildcard compilers/*/*.pyx compilers/*/*.pxd compilers/*/kernels/*)

.PHONY: run test test-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the CPU wheel in the `torch` extra; an unpinned torch pulls a CUDA build.
# The tests cover every optional compiler, so they install every extra, and the out-of-tree
# plugin example (examples/vendor-plugin) as a package of its own, as a third party would.
$(INSTALLED): $(BIN)/python $(BUILD_INPUTS)
	$(BIN)/python -m pip install --quiet -e '.[torch,ethos-u,openvino,sklearn,dask,dev]'
	$(BIN)/python -m pip install --quiet -e examples/vendor-plugin
	touch $@

run: $(INSTALLED)
	$(BIN)/tapeout run examples/digits/pipeline.yaml

# pytest-xdist: one worker per core; a file's tests stay on one worker, so its module fixtures
# are built once. `make test WORKERS=0` (or test-quick) runs in one process.
WORKERS ?= auto

# Every tier: the unit loop, the end-to-end builds, the server tests, the real-model suite.
test: $(INSTALLED)
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile

# The unit loop: no end-to-end run, no server, no real-model build. Its module fixtures are
# cheap, so a worker that runs dry takes single tests from the other (about 5% faster here).
test-quick: $(INSTALLED)
	$(BIN)/python -m pytest -n $(WORKERS) --dist worksteal -m 'not slow and not server and not real_models'

clean:
	rm -rf $(VENV) .tapeout build *.egg-info
