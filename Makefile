# Two entry points: `make demo` (set-up + a small closed-loop drive on the embedded SUMO backend)
# and `make test` (set-up + the test suite). Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint readme-table clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/takeover demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Regenerate README's scenario table from the catalog (a test checks they agree).
readme-table: $(STAMP)
	$(PY) -c "import re, pathlib, subprocess; p = pathlib.Path('README.md'); t = subprocess.run(['$(VENV)/bin/takeover', 'scenarios', 'list', '--markdown'], capture_output=True, text=True, check=True).stdout.strip(); s = p.read_text(); a, b = '<!-- scenario-table:start -->', '<!-- scenario-table:end -->'; p.write_text(s[: s.index(a) + len(a)] + chr(10) + t + chr(10) + s[s.index(b):])"

clean:
	rm -rf runs .pytest_cache .ruff_cache
