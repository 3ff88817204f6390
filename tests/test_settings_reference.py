"""docs/settings.md is the settings table, rendered: it cannot drift from the code."""

from __future__ import annotations

from pathlib import Path

from rerank_proxy.config import SETTINGS, TOOL_SETTINGS
from rerank_proxy.config_reference import markdown

PAGE = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def test_the_page_is_the_table_rendered():
    """Fails when a setting is added or changed without `python -m rerank_proxy.config_reference > docs/settings.md`."""
    assert PAGE.read_text() == markdown()


def test_every_setting_has_one_row_with_its_default_and_what_it_accepts():
    rows = {line.split("|")[1].strip(" `"): line for line in markdown().splitlines() if line.startswith("| `")}
    assert sorted(rows) == sorted(s.name for s in (*SETTINGS, *TOOL_SETTINGS))
    for setting in SETTINGS:
        cells = [cell.strip() for cell in rows[setting.name].split("|")[1:-1]]
        assert cells[1] == (f"`{setting.default}`" if setting.default else "(empty)"), setting.name
        assert cells[2] == setting.parse.accepted.replace("|", "\\|"), setting.name


def test_every_shipped_default_is_accepted_by_its_own_parser():
    """A default its parser refuses would make the documented value a start-up error."""
    for setting in SETTINGS:
        setting.parse(setting.default)
