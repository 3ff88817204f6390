"""The text a search is reranked on: the query's words, and each hit's text (from the mapping or `_source`)."""
