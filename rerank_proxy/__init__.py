"""rerank-proxy: add neural reranking to Elasticsearch/OpenSearch searches without touching the apps."""

__version__ = "0.1.0"
