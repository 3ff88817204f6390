"""Where a hit's final score comes from: the score cache, the providers, and the blending rule (final.py)."""
