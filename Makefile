# The README's two commands are `make up` and `make test`; everything else is optional.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: up demo test test-fast debian-packages lint bench install clean

# pytest-xdist processes: each has its own session (databases, Redis prefix, api, workers). loadscope keeps a
# module's tests on one process, so its module- and package-scoped workers start once. The whole suite mostly
# waits on the workers, apis and browsers it starts, so it runs two xdist processes a core (341 s against 558 s
# with one a core, on 2 cores); the fast tests compute, so they run one a core.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) * 2 )))
FAST_WORKERS ?= auto
XDIST := --dist loadscope

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when pyproject.toml changes, so a warm `make up` starts at once.
$(STAMP): pyproject.toml | $(PY)
	rm -f $(VENV)/.installed-*
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $@

install: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/runbookd up

demo: $(STAMP)
	$(VENV)/bin/runbookd demo

# The whole suite, real services on both databases; installs tests/debian-packages.txt first (root on Debian).
test: $(STAMP) debian-packages
	$(PY) -m pytest -n $(TEST_WORKERS) $(XDIST) $(PYTEST_ARGS)

# The inner loop: no processes, no PostgreSQL, no browser (marks set by tests/conftest.py from the fixtures used).
test-fast: $(STAMP)
	$(PY) -m pytest -n $(FAST_WORKERS) $(XDIST) -m "not processes and not postgres and not browser" $(PYTEST_ARGS)

debian-packages:
	@bash tests/debian-packages.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check server workers tests bench
	$(VENV)/bin/mypy server workers

# Green only when every benchmark measured and met its targets (each ends with a VERDICT line; exit 1 missed,
# 2 could not measure). bench/_*.py are helpers, not benchmarks.
bench: $(STAMP)
	@for b in bench/[!_]*.py; do echo "== $$b"; env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
		$(PY) $$b || exit 1; done
	@# Tracing on (OTLP to a loopback sink), to compare with the plain runs above, where it is off.
	@for b in bench/flag_eval.py bench/run_dispatch.py; do echo "== $$b (tracing on)"; \
		$(PY) bench/tracing/traced.py $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
