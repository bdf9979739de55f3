"""Request validation (control/fields.py): pure, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from control.errors import BadRequest
from control.fields import Fields, page, page_params, parse_json, query_fields


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "required"),
        (b"   ", "required"),
        (b"[1, 2]", "JSON object"),
        (b"{", "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": Infinity}', "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    ],
)
def test_bad_bodies(raw: bytes, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        parse_json(raw)


def test_good_body() -> None:
    assert parse_json(b'{"a": 1}') == {"a": 1}


def _problems(doc: dict[str, Any], read: Any) -> dict[str, str]:
    f = Fields(doc)
    read(f)
    try:
        f.done()
    except BadRequest as exc:
        return dict(exc.details["fields"])
    return {}


@pytest.mark.parametrize(
    ("doc", "read", "problems"),
    [
        ({}, lambda f: f.text("name"), {"name": "is required"}),
        ({"name": 5}, lambda f: f.text("name"), {"name": "must be a string"}),
        ({"name": "  "}, lambda f: f.text("name"), {"name": "must be 1 to 200 characters"}),
        ({"name": "x" * 201}, lambda f: f.text("name"), {"name": "must be 1 to 200 characters"}),
        (
            {"name": "a\x00b"},
            lambda f: f.text("name"),
            {"name": "must not contain control characters"},
        ),
        ({"name": "ok", "extra": 1}, lambda f: f.text("name"), {"extra": "unknown field"}),
        ({"n": True}, lambda f: f.integer("n", lo=0, hi=9), {"n": "must be an integer"}),
        ({"n": 1.5}, lambda f: f.integer("n", lo=0, hi=9), {"n": "must be an integer"}),
        ({"n": "3"}, lambda f: f.integer("n", lo=0, hi=9), {"n": "must be an integer"}),
        ({"n": 10}, lambda f: f.integer("n", lo=0, hi=9), {"n": "must be from 0 to 9"}),
        ({"x": "1"}, lambda f: f.number("x", lo=0, hi=1), {"x": "must be a number"}),
        ({"x": 2}, lambda f: f.number("x", lo=0, hi=1), {"x": "must be a number from 0 to 1"}),
        # A JSON integer too large for a float is out of range, not a crash (was a 500).
        (
            {"x": 10**400},
            lambda f: f.number("x", lo=0, hi=1),
            {"x": "must be a number from 0 to 1"},
        ),
        (
            {"x": -(10**400)},
            lambda f: f.number("x", lo=0, hi=1),
            {"x": "must be a number from 0 to 1"},
        ),
        ({"b": 1}, lambda f: f.boolean("b"), {"b": "must be true or false"}),
        ({"c": "z"}, lambda f: f.choice("c", ("a", "b")), {"c": "must be one of a, b"}),
        ({"l": "a"}, lambda f: f.text_list("l"), {"l": "must be a list of at most 50 strings"}),
        (
            {"l": [1]},
            lambda f: f.text_list("l"),
            {"l": "items must be strings of 1 to 100 characters"},
        ),
        ({"m": []}, lambda f: f.mapping("m"), {"m": "must be an object"}),
        ({"p": ""}, lambda f: f.secret("p"), {"p": "must be a string of 1 to 1024 characters"}),
        ({"name": None}, lambda f: f.text("name", required=False), {}),
        ({"n": 2.0}, lambda f: f.integer("n", lo=0, hi=9), {}),
    ],
)
def test_field_problems(doc: dict[str, Any], read: Any, problems: dict[str, str]) -> None:
    assert _problems(doc, read) == problems


def test_values_are_normalised() -> None:
    f = Fields({"name": "  Cafe\u0301 ", "l": ["a", "a", " b "], "s": " pw "})
    assert f.text("name") == "Caf\u00e9"
    assert f.text_list("l") == ["a", "b"]
    assert f.secret("s") == " pw "  # passwords are taken verbatim
    f.done()


def test_every_problem_is_reported_at_once() -> None:
    f = Fields({"a": 1, "b": "x", "zzz": 0})
    f.text("a")
    f.integer("b", lo=0, hi=1)
    with pytest.raises(BadRequest) as info:
        f.done()
    assert set(info.value.details["fields"]) == {"a", "b", "zzz"}


@pytest.mark.parametrize(
    ("query", "offset", "limit", "problem"),
    [
        ({}, 0, 20, None),
        ({"offset": "40", "limit": "10"}, 40, 10, None),
        ({"offset": "-1"}, 0, 20, "offset"),
        ({"limit": "0"}, 0, 20, "limit"),
        ({"limit": "101"}, 0, 20, "limit"),
        ({"limit": "ten"}, 0, 20, "limit"),
        ({"limit": "1e3"}, 0, 20, "limit"),
    ],
)
def test_page_params(query: dict[str, str], offset: int, limit: int, problem: str | None) -> None:
    f = page_params(query)
    assert (f.offset, f.limit) == (offset, limit)  # type: ignore[attr-defined]
    if problem is None:
        f.done()
    else:
        with pytest.raises(BadRequest) as info:
            f.done()
        assert problem in info.value.details["fields"]


def test_query_booleans() -> None:
    f = query_fields({"a": "true", "b": "0"})
    assert f.boolean("a") is True
    assert f.boolean("b") is False
    f.done()
    bad = query_fields({"a": "yes"})
    bad.boolean("a")
    with pytest.raises(BadRequest):
        bad.done()


def test_page_shape() -> None:
    assert page([1], 5, 0, 1) == {"items": [1], "total": 5, "offset": 0, "limit": 1}
