"""Local Elasticsearch and OpenSearch for the demo, the tests and the benchmarks: never used in serving.

Fetches the integration-test builds from Maven Central, unpacks them, and runs them as child
processes (`rerank-proxy engine ...`). The proxy itself talks to whatever UPSTREAM_URL names.
"""
