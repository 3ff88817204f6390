"""The score cache: in-process and Redis tiers, request coalescing."""
