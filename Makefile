# Two commands for a new user: `make demo` and `make test`.
# Each bootstraps .venv from pyproject.toml the first time it runs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LINTED := kvcluster tests $(wildcard bench)

.PHONY: demo test test-tools lint unit lab torture bench experiments notebooks peers clean

demo: $(STAMP)
	$(BIN)/kvcluster demo

test: $(STAMP) test-tools
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# System programs the tests run: curl (the README's examples, as a user runs them),
# etcd 3.4 (etcd3gw's suite runs against etcd itself too, as against kvcluster; the
# tests start their own etcd, so the service Debian's package starts is turned off),
# Debian's chromium with its chromedriver (the live view is tested in a real
# headless browser; Debian's own build, so nothing downloads a browser of its own),
# and iproute2's `ip` (nodes on network namespaces of their own: the tests run as
# root, as CI does).
test-tools:
	@command -v curl >/dev/null && command -v ip >/dev/null && command -v etcd >/dev/null && \
	  command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq curl iproute2 etcd-server chromium chromium-driver && \
	    { systemctl disable --now etcd 2>/dev/null || true; }; } || \
	  { echo "the tests need curl, ip, etcd and chromium (on Debian: sudo apt-get install curl iproute2 etcd-server chromium chromium-driver)"; exit 1; }

lint: $(STAMP)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration"

# Long nemesis runs: random faults against a real 5-node cluster, histories checked.
torture: $(STAMP)
	$(BIN)/kvcluster nemesis --duration 600 --nodes 5
	$(BIN)/kvcluster nemesis --duration 300 --nodes 5 --storage disk
	$(BIN)/kvcluster nemesis --duration 300 --nodes 3 --read-mode lease

# pytest-benchmark suites. Each run is also saved as .benchmarks/<machine-id>/NNNN_*.json
# (committed: not in .gitignore), so a later run shows a regression against a saved one:
#   .venv/bin/python -m pytest bench -o python_files='bench_*.py' --benchmark-compare
#   (the latest saved run on this machine; --benchmark-compare=0001 for run 0001), and to fail
#   on a regression add --benchmark-compare-fail=mean:20% (any mean over 20% slower;
#   on a busy machine means are noisy, and min:20% is steadier).
#   .venv/bin/pytest-benchmark compare .benchmarks/*/*.json   # saved runs side by side
# Micro suites only (bench_cluster.py starts node processes): put bench/bench_http.py
# bench/bench_core.py bench/bench_check.py bench/bench_storage.py in place of `bench`.
bench: $(STAMP)
	$(BIN)/python -m pytest bench -o python_files='bench_*.py' \
	  --benchmark-autosave --benchmark-json=bench-results.json

# The experiments behind the README's results (several minutes each).
experiments: $(STAMP)
	$(BIN)/kvcluster bench election -n 5 --timeouts 150-300 --trials 100
	$(BIN)/kvcluster bench commit
	$(BIN)/kvcluster bench reads
	$(BIN)/kvcluster bench timeline
	$(BIN)/kvcluster bench watch

# Re-run the notebooks with their default parameters and keep the outputs.
notebooks: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,lab]'
	$(BIN)/jupyter execute --inplace notebooks/*.ipynb

# kvcluster side by side with etcd (Debian's etcd-server) and PySyncObj.
peers: $(STAMP)
	@command -v etcd >/dev/null || apt-get install -y etcd-server || \
	  echo "etcd-server is not installed (try: sudo apt-get install etcd-server); etcd is skipped"
	$(BIN)/pip install -q -e '.[peers]'
	$(BIN)/python bench/peers.py --nodes 3,5

# Jupyter refuses to start as root without --allow-root, and containers and many
# cloud notebooks run as root: pass it then, and only then.
LAB_FLAGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,lab]'
	$(BIN)/jupyter lab $(LAB_FLAGS) notebooks

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || \
	  { echo "kvcluster needs Python 3.11 or newer as '$(PYTHON)' (try: make PYTHON=python3.12 ...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
	  { rm -rf $(VENV); echo "Could not create a virtual environment. On Debian/Ubuntu: sudo apt install python3-venv"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
