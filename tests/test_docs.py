"""
The documentation a newcomer reads agrees with the code: docs/configuration.md
names every key of the configuration schema and no other, with the defaults
the code applies; the README links to it, starts with the two set-up
commands and names no internal issue numbers.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from apicache.config import SCHEMA, Config, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DOC = ROOT / "docs" / "configuration.md"
README = ROOT / "README.rst"

ROUTE = {"type": "object", "path": "/objects/<id>", "upstream": "/objects/{id}"}
EVENT = {"types": ["object.update"], "route": "object", "id_field": "objectid"}

_HEADING = re.compile(r"^## \[{1,2}([a-z_]+)\]{1,2}\s*$")
_ROW = re.compile(r"^\| `([a-z_]+)` \| (.*?) \| (.*) \|\s*$")


def documented() -> dict[tuple[str, str], str]:
    """
    Return (table, key) -> the default cell, for every row of every table
    under a C{## [table]} or C{## [[table]]} heading of docs/configuration.md.
    """
    rows: dict[tuple[str, str], str] = {}
    table = ""
    for line in CONFIG_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            m = _HEADING.match(line)
            table = m.group(1) if m else ""
            continue
        m = _ROW.match(line)
        if m and table:
            assert (table, m.group(1)) not in rows, f"[{table}] {m.group(1)} is documented twice"
            rows[(table, m.group(1))] = m.group(2).strip()
    return rows


def schema_keys() -> set[tuple[str, str]]:
    return {(table, key) for table, keys in SCHEMA.items() for key in keys}


def test_every_schema_key_is_documented() -> None:
    missing = sorted(schema_keys() - set(documented()))
    assert missing == [], f"keys of apicache/config.py missing from docs/configuration.md: {missing}"


def test_every_documented_key_is_in_the_schema() -> None:
    extra = sorted(set(documented()) - schema_keys())
    assert extra == [], f"docs/configuration.md documents keys apicache/config.py does not accept: {extra}"


def test_every_table_has_a_heading() -> None:
    assert {table for table, _ in documented()} == set(SCHEMA)


def _literal(cell: str) -> tuple[bool, Any]:
    """
    Return (True, value) when a default cell is one TOML value in backquotes.
    """
    m = re.fullmatch(r"`([^`]+)`", cell)
    if not m:
        return False, None
    try:
        return True, tomllib.loads(f"v = {m.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        return False, None


def _value(table: str, key: str, given: dict[str, Any]) -> Any:
    """
    Return the configured value of C{table.key} for a file that gives
    C{given} (nothing, or the key's documented default), as the daemon
    would see it after normalising.
    """
    if table == "routes":
        c = parse_config({"upstream": {"base_url": "http://u"}, "routes": [dict(ROUTE, **given)]}, Config.source, {})
        return getattr(c.routes[0], key)
    if table == "events":
        c = parse_config({"upstream": {"base_url": "http://u"}, "routes": [ROUTE], "events": [dict(EVENT, **given)]},
                         Config.source, {})
        return getattr(c.events[0], key)
    # the built-in defaults' source: no api key needed
    return getattr(getattr(parse_config({table: given} if given else {}, Config.source, {}), table), key)


@pytest.mark.parametrize("table, key", sorted(documented()))
def test_documented_defaults_are_the_defaults(table: str, key: str) -> None:
    cell = documented()[(table, key)]
    is_literal, value = _literal(cell)
    if not is_literal:
        # "(required)", "(unset)", "(none)": the key has no default value
        assert cell.startswith("("), f"[{table}] {key}: default {cell!r} is neither a TOML value nor (...)"
        return
    assert _value(table, key, {key: value}) == _value(table, key, {}), (
        f"[{table}] {key}: docs/configuration.md says {cell}, apicache/config.py differs"
    )


def test_the_example_loads() -> None:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks
    path = CONFIG_DOC.parent / "example.toml"
    # parse_config, not load_config: the example stays a part of the page
    data = tomllib.loads(blocks[-1])
    c = parse_config(data, str(path), {"APICACHE_API_KEY": "k"})
    assert c.route("list").tags == ("objects",)


def test_the_shipped_example_loads() -> None:
    assert load_config(str(ROOT / "apicache.toml"), {"APICACHE_API_KEY": "k"}).routes


# --- the README ---------------------------------------------------------------


def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_readme_links_the_configuration_reference_instead_of_repeating_it() -> None:
    text = readme()
    assert "docs/configuration.md" in text
    # the tables live in docs/ only: no row of a key table in the README
    assert not re.search(r"^``(tenant_header|max_entry_fraction|forward_headers)``\s{2,}", text, re.M)


def test_the_readme_starts_with_the_two_set_up_commands() -> None:
    first_block = re.search(r"\.\. code-block:: sh\n\n((?:    .*\n)+)", readme())
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make run", "make test"]
    # nothing else comes before it but the title and one paragraph
    assert readme().index(".. code-block:: sh") < 400


def test_the_readme_links_the_benchmarks() -> None:
    assert "docs/benchmarks.md" in readme()
    assert (ROOT / "docs" / "benchmarks.md").is_file()


@pytest.mark.parametrize(
    "path", ["README.rst", "Makefile", "docs/configuration.md", "docs/benchmarks.md"]
)
def test_no_internal_issue_numbers(path: str) -> None:
    text = (ROOT / path).read_text(encoding="utf-8")
    found = re.findall(r"\bissues?\s*#?\d+|\bthe issue'?s?\b", text, re.I)
    assert found == [], f"{path} names internal issues: {found}"


def test_the_readme_says_what_callers_get() -> None:
    text = " ".join(readme().split())
    assert "server-side callers" in text
    assert "CORS preflight" in text
    assert "only-if-cached" in text
    assert "Cache-Control" in text


def test_the_read_after_write_recipe_shares_one_constant_tag() -> None:
    blocks = re.findall(r"\.\. code-block:: toml\n\n((?:    .*\n|\n)+)", readme())
    recipe = next(b for b in blocks if 'type = "objects"' in b)
    data = tomllib.loads("\n".join(line[4:] for line in recipe.splitlines()))
    c = parse_config(dict(data, upstream={"base_url": "http://u"}), Config.source, {})
    item, items = c.route("object"), c.route("objects")
    assert "PATCH" in item.pass_methods
    shared = set(item.tags) & set(items.tags)
    assert shared and all("{" not in t for t in shared)


def test_the_readme_is_valid_restructuredtext() -> None:
    """
    The README is also the package's long description: a broken table or
    link would show as raw text on the package index.
    """
    import io

    from docutils.core import publish_doctree

    warnings = io.StringIO()
    publish_doctree(
        readme(), source_path=str(README),
        settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": warnings},
    )
    assert warnings.getvalue() == ""
