# Two entry points, both from a fresh checkout:
#   make serve   install into .venv and start the server on the embedded default model
#   make test    install into .venv (with test extras) and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install deploy-tools serve test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: the CPU wheel; anything looser pulls CUDA builds.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/mixdiff serve

# promtool and prometheus for tests/deploy, from Debian's prometheus package (root only;
# without them those tests skip and say why).
deploy-tools:
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; \
	else echo "deploy-tools: promtool not found and not root; tests/deploy will skip the Prometheus checks" >&2; fi

test: install deploy-tools
	$(VENV)/bin/pytest

bench: install
	$(VENV)/bin/mixdiff bench

clean:
	rm -rf $(VENV) build *.egg-info
