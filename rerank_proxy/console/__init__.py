"""The relevance console: compare lexical and reranked results, judge them, run query sets."""
