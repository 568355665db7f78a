"""Countries and continents of GLDv2 landmarks.

A landmark's country comes from GLDv2's country files (``country_codes.json`` plus one
``<CODE>.json`` per country listing the Wikimedia categories in it) or from a plain
``landmark_id,country`` CSV. A country's continent comes from the code table shipped in
``data/country_continent.csv`` (ISO 3166-1 alpha-2 plus XK = Kosovo -> Europe); an unknown or
missing country maps to ``OTHER``.

Categories are matched by name, tolerantly (see :func:`category_key`): the full Commons URL, the
``Category:`` title or the bare title, URL-encoded or not, with underscores or spaces, all map to
one key.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import unicodedata
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

CONTINENTS: tuple[str, ...] = (
    "Asia",
    "Europe",
    "Africa",
    "North America",
    "South America",
    "Antarctica",
    "Oceania",
    "OTHER",
)
OTHER = "OTHER"
DEFAULT_TABLE = Path(__file__).resolve().parents[2] / "data" / "country_continent.csv"


class CountryFileError(ValueError):
    """A country file or country CSV that cannot be understood (message names the file)."""


def category_key(category: str) -> str:
    """Normalised key of a Wikimedia Commons category, for matching categories across files.

    ``http://commons.wikimedia.org/wiki/Category:Eiffel_Tower``, ``Category:Eiffel Tower``,
    ``Eiffel_Tower`` and ``Eiffel%20Tower`` all give ``Eiffel Tower``: the URL is percent-decoded,
    everything up to ``/wiki/`` and a leading ``Category:`` are dropped, underscores become spaces,
    runs of white space collapse, the text is Unicode-NFC-normalised and the first letter is
    upper-cased (MediaWiki titles are case-insensitive in their first letter only).
    """
    s = urllib.parse.unquote(category.strip())
    if "/wiki/" in s:
        s = s.split("/wiki/", 1)[1]
    if s[:9].lower() == "category:":
        s = s[9:]
    s = " ".join(s.replace("_", " ").split())
    s = unicodedata.normalize("NFC", s)
    return s[:1].upper() + s[1:]


@functools.cache
def _load_table(path: str) -> dict[str, str]:
    table: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(line for line in f if not line.startswith("#"))
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["code", "continent"]:
            raise CountryFileError(f"{path}: expected a header 'code,continent,...', got {header}")
        for row in rows:
            code, continent = row[0].strip().upper(), row[1].strip()
            if continent not in CONTINENTS:
                raise CountryFileError(f"{path}: unknown continent {continent!r} for {code}")
            table[code] = continent
    return table


def continent_table(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Two-letter country code -> continent name, from ``data/country_continent.csv``."""
    return dict(_load_table(str(path or DEFAULT_TABLE)))


def continent_of(country: str, table: Mapping[str, str] | None = None) -> str:
    """Continent of a two-letter country code; ``OTHER`` for '' or an unknown code."""
    table = continent_table() if table is None else table
    return table.get(country.strip().upper(), OTHER)


def _country_codes(path: Path) -> list[str]:
    """Two-letter codes listed in GLDv2's ``country_codes.json``.

    Accepted forms: a list of codes; a list of objects with a code field (``code``, ``alpha2``,
    ``alpha-2``, ``country_code`` or ``iso``); an object mapping code -> name or name -> code.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CountryFileError(f"{path}: cannot read country codes: {e}") from e

    def is_code(x: object) -> bool:
        return isinstance(x, str) and (len(x) == 2 and x.isalpha() or x.upper() == OTHER)

    codes: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            if is_code(k):
                codes.append(k)
            elif is_code(v):
                codes.append(v)
            else:
                raise CountryFileError(f"{path}: neither {k!r} nor {v!r} is a two-letter code")
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if is_code(item):
                codes.append(item)
                continue
            if isinstance(item, dict):
                found = [item[f] for f in ("code", "alpha2", "alpha-2", "country_code", "iso")
                         if is_code(item.get(f))]
                if found:
                    codes.append(found[0])
                    continue
            raise CountryFileError(f"{path}: entry {i} ({item!r}) has no two-letter country code")
    else:
        raise CountryFileError(f"{path}: expected a JSON list or object, got {type(data).__name__}")
    return [c.upper() for c in codes]


def _category_names(path: Path) -> list[str]:
    """Category names listed in one per-country JSON file (strings or objects with ``name``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CountryFileError(f"{path}: cannot read country categories: {e}") from e
    if isinstance(data, dict):
        data = data.get("categories", data.get("landmarks"))
    if not isinstance(data, list):
        raise CountryFileError(f"{path}: expected a JSON list of categories")
    names = []
    for i, item in enumerate(data):
        name = item.get("name", item.get("category")) if isinstance(item, dict) else item
        if not isinstance(name, str) or not name.strip():
            raise CountryFileError(f"{path}: entry {i} ({item!r}) has no category name")
        names.append(name)
    return names


def load_country_dir(country_dir: str | os.PathLike) -> dict[str, str]:
    """Category key (:func:`category_key`) -> two-letter country code, from GLDv2 country files.

    ``country_dir`` holds ``country_codes.json`` and one ``<CODE>.json`` per listed code (the file
    name's case is not significant). A listed country without a file is an error; a category
    listed under several countries keeps the last one in ``country_codes.json`` order (as the
    reference code does). A pseudo-country ``OTHER`` maps to '' (no country).
    """
    country_dir = Path(country_dir)
    codes_path = country_dir / "country_codes.json"
    if not codes_path.is_file():
        raise CountryFileError(f"{codes_path}: not found")
    files = {p.stem.upper(): p for p in country_dir.glob("*.json") if p.name != codes_path.name}
    out: dict[str, str] = {}
    for code in _country_codes(codes_path):
        if code not in files:
            raise CountryFileError(f"{country_dir}: {codes_path.name} lists {code} but there is "
                                   f"no {code}.json")
        for name in _category_names(files[code]):
            out[category_key(name)] = "" if code == OTHER else code
    return out


def load_country_csv(path: str | os.PathLike) -> dict[int, str]:
    """Train landmark id -> two-letter country code, from a ``landmark_id,country`` CSV."""
    out: dict[int, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:  # a byte-order mark is allowed
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header] != ["landmark_id", "country"]:
            raise CountryFileError(f"{path}:1: expected header 'landmark_id,country', got {header}")
        for row in rows:
            where = f"{path}:{rows.line_num}"
            if len(row) != 2:
                raise CountryFileError(f"{where}: expected 2 fields, got {len(row)}: {row}")
            try:
                lid = int(row[0])
            except ValueError:
                raise CountryFileError(
                    f"{where}: landmark_id {row[0]!r} is not an integer") from None
            code = row[1].strip().upper()
            if code and len(code) != 2 and code != OTHER:
                raise CountryFileError(f"{where}: country {row[1]!r} is not a two-letter code")
            out[lid] = code if code != OTHER else ""
    return out
