"""The built-in reranker: all-MiniLM-L6-v2 embeddings, the vector store, and a Cohere-compatible server on it."""
