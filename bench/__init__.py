"""Benchmarks of rerank-proxy: cost (provider calls) and performance. See BENCHMARKS.md."""
