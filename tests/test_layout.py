"""The package's shape: what each layer may import."""

from __future__ import annotations

import subprocess
import sys


def test_the_edge_loads_no_model_code():
    """The edge hands relayed writes to the built-in model through a protocol; importing it must
    not load numpy (nor the model), so a proxy with another provider never pays for them."""
    code = ("import rerank_proxy.edge, sys; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('numpy', 'onnxruntime', 'tokenizers')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded
