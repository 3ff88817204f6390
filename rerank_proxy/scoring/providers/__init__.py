"""The rerank providers behind one interface (base.py), and the resilience layer around them."""
