# Two entry points, both from a fresh checkout:
#   make serve   install into .venv and start the server on the embedded default model
#   make test    install into .venv (with test extras) and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install serve test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: the CPU wheel; anything looser pulls CUDA builds.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/mixdiff serve

test: install
	$(VENV)/bin/pytest

bench: install
	$(VENV)/bin/mixdiff bench

clean:
	rm -rf $(VENV) build *.egg-info
