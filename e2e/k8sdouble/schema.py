"""Custom-resource validation and defaulting from a CRD's openAPIV3Schema, as the API server does.

Why: an invalid EtcdCluster must be refused at the door with the schema's message, and the
operator may rely on the schema's defaults being filled in; a double that stored anything would
hide both. jsonschema does the checking; the Kubernetes dialect (nullable, int-or-string,
x-kubernetes-*) is translated first, and errors are worded as the API server words them.
CEL rules (x-kubernetes-validations) are evaluated for the subset CRD field rules use (has(),
comparisons, &&, ||, !, size(), arithmetic); a rule outside it is skipped, never refused.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema


def _to_jsonschema(node: Any) -> Any:
    """Translate the Kubernetes structural-schema dialect into plain JSON Schema."""
    if isinstance(node, list):
        return [_to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_jsonschema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k not in ("nullable", "format", "default")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    for key in ("properties", "patternProperties"):
        if key in node:
            out[key] = {name: _to_jsonschema(sub) for name, sub in node[key].items()}
    return out


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """Fill in `default` values for absent properties, recursively (the API server's defaulting)."""
    if isinstance(obj, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(obj[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in obj:
                if name not in (schema.get("properties") or {}):
                    obj[name] = apply_defaults(obj[name], extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(x, schema["items"]) for x in obj]
    return obj


def _path(err: jsonschema.ValidationError) -> str:
    parts: list[str] = []
    for p in err.absolute_path:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{p}]"]
        else:
            parts.append(str(p))
    return ".".join(parts)


def _word(err: jsonschema.ValidationError) -> str:
    """One error in the API server's wording (field.path: Kind of error: detail)."""
    path = _path(err)
    value = json.dumps(err.instance)
    v = err.validator
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return f"{path + '.' if path else ''}{missing}: Required value"
    if v == "enum":
        allowed = ", ".join(json.dumps(x) for x in err.validator_value)
        return f"{path}: Unsupported value: {value}: supported values: {allowed}"
    if v == "maximum":
        return f"{path}: Invalid value: {value}: {path} in body should be less than or equal to {err.validator_value}"
    if v == "minimum":
        return f"{path}: Invalid value: {value}: {path} in body should be greater than or equal to {err.validator_value}"
    if v == "type":
        return f"{path}: Invalid value: \"{type(err.instance).__name__}\": {path} in body must be of type {err.validator_value}: {value}"
    if v == "pattern":
        return f"{path}: Invalid value: {value}: {path} in body should match '{err.validator_value}'"
    if v in ("maxLength", "minLength", "maxItems", "minItems"):
        return f"{path}: Invalid value: {value}: {path} in body {err.message}"
    return f"{path}: Invalid value: {value}: {err.message}"


class _Missing(Exception):
    """A CEL field access on an absent field (the rule then fails, as 'no such key')."""


class _Str(str):
    def _cel_size(self) -> int:
        return len(self)


class _List(list):  # type: ignore[type-arg]
    def _cel_size(self) -> int:
        return len(self)


class _Map:
    """A CEL map/object: field access by attribute, absent fields raise."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._data:
            raise _Missing(name)
        return _wrap(self._data[name])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Map) and self._data == other._data

    def __hash__(self) -> int:
        return id(self)

    def _cel_size(self) -> int:
        return len(self._data)


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return _Map(value)
    if isinstance(value, list):
        return _List(_wrap(v) for v in value)
    if isinstance(value, str):
        return _Str(value)
    return value


def _has(thunk: Any) -> bool:
    try:
        thunk()
        return True
    except _Missing:
        return False


def _cel_to_python(rule: str) -> str:
    """The CEL subset CRDs use for field rules (has, ==, !=, &&, ||, !, size(), arithmetic) as Python."""
    expr = re.sub(r"has\(([\w.]+)\)", r"_has(lambda: \1)", rule)
    expr = expr.replace(".size()", "._cel_size()").replace("&&", " and ").replace("||", " or ")
    expr = re.sub(r"!(?!=)", " not ", expr)
    return expr


def _cel(schema: Any, new: Any, old: Any, path: str, errors: list[str]) -> None:
    """Evaluate x-kubernetes-validations rules; transition rules (oldSelf) only on update."""
    if not isinstance(schema, dict) or new is None:
        return
    for rule in schema.get("x-kubernetes-validations") or []:
        text = rule.get("rule", "")
        if "oldSelf" in text and old is None:
            continue
        try:
            scope = {"__builtins__": {}, "_has": _has, "true": True, "false": False, "null": None,
                     "self": _wrap(new), "oldSelf": _wrap(old)}  # globals: the has() lambdas must see them
            ok = bool(eval(_cel_to_python(text), scope))
        except _Missing:
            ok = False
        except Exception:  # noqa: BLE001, S112 - a rule outside the subset is not evaluated, never refused
            continue
        if not ok:
            kind = "object" if isinstance(new, dict) else type(new).__name__
            errors.append(f"{path or '<nil>'}: Invalid value: \"{kind}\": {rule.get('message') or 'failed rule: ' + text}")
    if isinstance(new, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in new:
                _cel(sub, new[name], old.get(name) if isinstance(old, dict) else None,
                     f"{path}.{name}" if path else name, errors)


def validate(obj: dict[str, Any], schema: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Every schema violation of `obj` (and immutability violations against `old`), worded as Kubernetes does."""
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    checked = _to_jsonschema({**schema, "properties": {k: v for k, v in (schema.get("properties") or {}).items()
                                                       if k not in ("apiVersion", "kind", "metadata")}})
    validator = jsonschema.Draft7Validator(checked)
    errors = [_word(e) for e in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))]
    _cel(schema, obj, old, "", errors)
    return errors


def prune(obj: Any, schema: dict[str, Any], top: bool = True) -> Any:
    """Drop fields the structural schema does not know (the API server's pruning)."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return obj
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and extra is None:
            return obj
        out = {}
        for k, v in obj.items():
            if top and k in ("apiVersion", "kind", "metadata"):
                out[k] = v
            elif props is not None and k in props:
                out[k] = prune(v, props[k], False)
            elif isinstance(extra, dict):
                out[k] = prune(v, extra, False)
            elif extra is True:
                out[k] = v
        return out
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [prune(x, schema["items"], False) for x in obj]
    return obj
