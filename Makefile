# sentinel-snow-sync: every target bootstraps what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install tools test lint typecheck emulators demo bench soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Programs the tests run (PROBE=DEBIAN_PACKAGE): `make tools` installs the missing ones.
# postgresql-15: the throw-away database server of the shared-state tests (tests/pg.py).
OS_TOOLS := \
	promtool=prometheus \
	rsyslogd=rsyslog \
	'/usr/lib/*/rsyslog/lmnsd_gtls.so=rsyslog-gnutls' \
	systemd-analyze=systemd \
	/usr/lib/postgresql/15/bin/initdb=postgresql-15

tools:
	@.ci/os-tools $(OS_TOOLS)

test: $(STAMP) tools
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q -p no:cacheprovider -m "not soak"

demo: $(STAMP)
	$(BIN)/python -m agent demo

soak: $(STAMP)
	HYPOTHESIS_PROFILE=soak SNOW_SYNC_SOAK=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m soak

bench: $(STAMP)
	$(BIN)/python -m agent.testing.bench

lint: $(STAMP)
	$(BIN)/ruff check agent tests
	$(BIN)/mypy

emulators: $(STAMP)
	$(BIN)/python -m agent.testing.emulators

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
