# Two entry points, both from a fresh checkout:
#   make serve   install into .venv and start the server on the embedded default model
#   make test    install into .venv (with test extras) and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install test-tools serve test contract bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: the CPU wheel; anything looser pulls CUDA builds.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/mixdiff serve

# Debian packages the tests drive, downloaded and unpacked into .tools/NAME: nothing is
# installed into the system and no service is enabled. Without apt-get, the tests that
# need them skip and say why. prometheus/promtool (about 100 MB) for tests/deploy; the
# headless Chromium (about 300 MB) for the playground's browser test; redis-server (7 MB)
# for the shared job store's tests.
TOOLS := .tools
APT := apt-get -q -o Dir::State::Lists=$(CURDIR)/$(TOOLS)/apt/lists -o Dir::Cache=$(CURDIR)/$(TOOLS)/apt/cache \
	-o Dir::State::status=/var/lib/dpkg/status -o Debug::NoLocking=1 -o APT::Sandbox::User=$$(id -un)

# $(call unpack,FOLDER,PACKAGES): Debian's PACKAGES unpacked into .tools/FOLDER
define unpack
	@if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then \
		echo "test-tools: no apt-get here; the tests that need $(1) will skip" >&2; exit 0; fi; \
	rm -rf $(TOOLS)/$(1) && mkdir -p $(TOOLS)/apt/lists/partial $(TOOLS)/apt/cache/archives/partial $(TOOLS)/$(1)/debs && \
	$(APT) update >/dev/null && cd $(TOOLS)/$(1)/debs && \
	$(APT) download $(2) >/dev/null && for deb in *.deb; do dpkg-deb -x $$deb ..; done && cd .. && rm -rf debs ../apt || \
	{ rm -rf $(CURDIR)/$(TOOLS)/$(1); echo "test-tools: could not download Debian's $(1); the tests that need it will skip" >&2; }
endef

# PACKAGE and the packages this machine lacks for it (no recommends), as apt-get would install them
with_libraries = $$($(APT) install --simulate --no-install-recommends $(1) 2>/dev/null | awk '/^Inst/ {print $$2}')

$(TOOLS)/prometheus/usr/bin/promtool:  # Go binaries: no libraries needed
	$(call unpack,prometheus,prometheus)

$(TOOLS)/chromium/usr/lib/chromium/chromium-headless-shell:
	$(call unpack,chromium,$(call with_libraries,chromium-headless-shell))

$(TOOLS)/redis/usr/bin/redis-server:
	$(call unpack,redis,$(call with_libraries,redis-server))

test-tools: $(TOOLS)/prometheus/usr/bin/promtool $(TOOLS)/chromium/usr/lib/chromium/chromium-headless-shell \
	$(TOOLS)/redis/usr/bin/redis-server

test: install test-tools
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
