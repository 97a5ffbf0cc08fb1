# Two entry points, both from a fresh checkout:
#   make serve   install into .venv and start the server on the embedded default model
#   make test    install into .venv (with test extras) and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install deploy-tools serve test contract bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: the CPU wheel; anything looser pulls CUDA builds.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/mixdiff serve

# promtool and prometheus for tests/deploy: Debian's prometheus package, downloaded and
# unpacked into .tools/ (about 100 MB) -- nothing is installed into the system and no
# service is enabled. Without apt-get those tests skip and say why.
TOOLS := .tools
APT := apt-get -q -o Dir::State::Lists=$(CURDIR)/$(TOOLS)/apt/lists -o Dir::Cache=$(CURDIR)/$(TOOLS)/apt/cache \
	-o Dir::State::status=/var/lib/dpkg/status -o Debug::NoLocking=1 -o APT::Sandbox::User=$$(id -un)

$(TOOLS)/bin/promtool:
	@if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then \
		echo "deploy-tools: no apt-get here; tests/deploy will skip the Prometheus checks" >&2; exit 0; fi; \
	mkdir -p $(TOOLS)/apt/lists/partial $(TOOLS)/apt/cache/archives/partial $(TOOLS)/bin && \
	$(APT) update >/dev/null && cd $(TOOLS) && $(APT) download prometheus >/dev/null && \
	dpkg-deb -x prometheus_*.deb prometheus && rm -f prometheus_*.deb && rm -rf apt && \
	ln -sf ../prometheus/usr/bin/prometheus ../prometheus/usr/bin/promtool bin/ || \
	echo "deploy-tools: could not download Debian's prometheus; tests/deploy will skip the Prometheus checks" >&2

deploy-tools: $(TOOLS)/bin/promtool

test: install deploy-tools
	$(VENV)/bin/pytest

# schemathesis, every check, against a real server on the tiny pipeline: the suite runs 5
# examples per operation; this runs CONTRACT_EXAMPLES (minutes).
CONTRACT_EXAMPLES ?= 200
contract: install
	MIXDIFF_CONTRACT_EXAMPLES=$(CONTRACT_EXAMPLES) $(VENV)/bin/pytest tests/api/test_api_contract.py -k schemathesis

bench: install
	$(VENV)/bin/mixdiff bench

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info
