"""The apps users put on Elasticsearch, pointed at the proxy: Haystack, LangChain, LlamaIndex (the `apps` extra)."""
