# The two commands of the README: `make demo` (the main job: the 2D moons -> swiss-roll experiment
# end to end) and `make test` (the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ecd2g-installed

.PHONY: env demo test bench report lint clean

$(STAMP): pyproject.toml setup.py scripts/setup_env.sh $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*.h csrc/*/*.h)
	VENV=$(VENV) bash scripts/setup_env.sh

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ecd2g run moons-to-swissroll-2d --out runs/moons-to-swissroll-2d

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks/bench_*.py -o python_files='bench_*.py' --benchmark-only

report: $(STAMP)
	$(PY) -m benchmarks.report $(REPORT_ARGS)

lint: $(STAMP)
	$(PY) -m pip install -q ruff && $(PY) -m ruff check .

clean:
	rm -rf build *.egg-info ecd2g_fast/_C*.so
