"""Label and field selectors, parsed and matched as the API server does for list and watch.

Why: the operator (through kopf or the client) lists and watches its Pods and PVCs by label;
a double that ignored selectors would hand it other clusters' objects and hide real bugs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Matcher = Callable[[dict[str, Any]], bool]


class SelectorError(ValueError):
    """A selector string the API server would refuse (400)."""


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses (`a in (x,y),b=c`)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([\w./-]+)\s+(in|notin)\s+\((.*)\)$")
_EQ_RE = re.compile(r"^([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)$")
_KEY_RE = re.compile(r"^(!?)([\w./-]+)$")


def _label_term(term: str) -> Matcher:
    """One requirement of a label selector."""
    if m := _SET_RE.match(term):
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ_RE.match(term):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _KEY_RE.match(term):
        neg, key = m.groups()
        if neg:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise SelectorError(f"unable to parse requirement: {term!r}")


def label_matcher(selector: str | None) -> Matcher:
    """A predicate on an object's labels for `labelSelector=...` (None or empty matches all)."""
    if not selector:
        return lambda obj: True
    terms = [_label_term(t) for t in _split_top(selector)]
    return lambda obj: all(t((obj.get("metadata") or {}).get("labels") or {}) for t in terms)


def _field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if cur is None:
        return ""
    return str(cur).lower() if isinstance(cur, bool) else str(cur)


def field_matcher(selector: str | None) -> Matcher:
    """A predicate for `fieldSelector=...` over dotted paths (metadata.name, status.phase, ...)."""
    if not selector:
        return lambda obj: True
    terms: list[Matcher] = []
    for term in _split_top(selector):
        m = re.match(r"^([\w.]+)\s*(==|=|!=)\s*(.*)$", term)
        if not m:
            raise SelectorError(f"invalid field selector: {term!r}")
        path, op, value = m.groups()
        terms.append(_field_term(path, op != "!=", value))
    return lambda obj: all(t(obj) for t in terms)


def _field_term(path: str, equal: bool, value: str) -> Matcher:
    """One `path=value` / `path!=value` requirement."""
    return lambda obj: (_field_value(obj, path) == value) == equal


def match_label_selector(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A structured LabelSelector (matchLabels/matchExpressions), as in a Service or PDB."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True
