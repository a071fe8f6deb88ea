# The README's two commands are `make up` and `make test`; everything else is optional.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: up demo test lint bench install clean chromium alert-e2e-packages

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

test: $(STAMP) chromium alert-e2e-packages
	$(PY) -m pytest $(PYTEST_ARGS)

# The console's browser tests drive Debian's chromium (never a downloaded browser). As root on Debian it is
# installed once, skipped when present; elsewhere those tests skip and say why.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the console's browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

# The alert end-to-end test (tests/server/hooks/test_alertmanager_e2e.py) runs Debian's Prometheus and
# Alertmanager: installed here when running as root on Debian and missing; elsewhere that test skips, saying why.
alert-e2e-packages:
	@if [ ! -x /usr/bin/prometheus ] || [ ! -x /usr/bin/prometheus-alertmanager ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager; \
	  else echo "prometheus/prometheus-alertmanager missing: the alert end-to-end test will skip"; fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check server workers tests bench
	$(VENV)/bin/mypy server workers

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
		$(PY) $$b || exit 1; done
	@# Tracing on (OTLP to a loopback sink), to compare with the plain runs above, where it is off.
	@for b in bench/flag_eval.py bench/run_dispatch.py; do echo "== $$b (tracing on)"; \
		$(PY) bench/tracing/traced.py $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
