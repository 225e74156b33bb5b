"""The three patch formats a Kubernetes API server accepts, applied to plain JSON objects.

Why our own: kopf sends JSON patches (starting with a `test` of the resourceVersion, whose
failure must be a 422), merge patches for everything else, and the `kubernetes` client sends
strategic-merge patches for dict bodies on built-in kinds; each has to behave as the API
server's does for the operator's view of the world to be right.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(Exception):
    """A patch that cannot be applied; `test_failed` separates a failed `test` op (still a 422)."""

    def __init__(self, message: str, test_failed: bool = False) -> None:
        super().__init__(message)
        self.test_failed = test_failed


def _pointer(path: str) -> list[str]:
    """Split an RFC 6901 JSON pointer into unescaped tokens."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _walk(doc: Any, tokens: list[str]) -> Any:
    """The container the last token of `tokens` refers into."""
    cur = doc
    for tok in tokens:
        if isinstance(cur, list):
            try:
                cur = cur[int(tok)]
            except (ValueError, IndexError) as exc:
                raise PatchError(f"path element {tok!r} not found") from exc
        elif isinstance(cur, dict):
            if tok not in cur:
                raise PatchError(f"path element {tok!r} not found")
            cur = cur[tok]
        else:
            raise PatchError(f"path element {tok!r} not found")
    return cur


def _get(doc: Any, path: str) -> Any:
    return _walk(doc, _pointer(path))


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            idx = int(last)
            if idx > len(parent):
                raise PatchError(f"index {idx} out of range")
            parent.insert(idx, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"cannot add at {path}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    try:
        if isinstance(parent, list):
            parent.pop(int(last))
        else:
            del parent[last]
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise PatchError(f"unable to remove nonexistent key {last!r}") from exc
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """Apply an RFC 6902 JSON patch; a failed `test` raises PatchError(test_failed=True)."""
    if not isinstance(ops, list):
        raise PatchError("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)  # must exist
            doc = _add(_remove(doc, path), path, copy.deepcopy(op.get("value"))) if _pointer(path) else op.get("value")
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_get(doc, op["from"]))
            if kind == "move":
                doc = _remove(doc, op["from"])
            doc = _add(doc, path, value)
        elif kind == "test":
            try:
                actual = _get(doc, path)
            except PatchError as exc:
                raise PatchError(f"testing value {path} failed: {exc}", test_failed=True) from exc
            if actual != op.get("value"):
                raise PatchError(f"testing value {path} failed", test_failed=True)
        else:
            raise PatchError(f"unknown json patch operation {kind!r}")
    return doc


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Merge keys of the built-in list fields the operator's objects use (from the Kubernetes API's
# patchMergeKey tags). A list of objects not named here is replaced wholesale, as the server does.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
    "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort", "conditions": "type",
    "ownerReferences": "uid", "imagePullSecrets": "name", "hostAliases": "ip", "tolerations": "key",
    "containerStatuses": "name", "volumeDevices": "devicePath",
}
PRIMITIVE_MERGE_LISTS = {"finalizers"}  # lists of strings merged as sets


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """A strategic-merge patch for the built-in kinds: lists with merge keys merge by key.

    Supports the `$patch: replace|delete` directives, `$deleteFromPrimitiveList/<f>` and ignores
    `$setElementOrder`/`$retainKeys` (ordering hints), which covers what kubectl and the client send.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key == "$retainKeys":
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [x for x in result.get(name) or [] if x not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, MERGE_KEYS[key], key)
        elif isinstance(value, list) and key in PRIMITIVE_MERGE_LISTS and isinstance(result.get(key), list):
            result[key] = list(result[key]) + [x for x in value if x not in result[key]]
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value, key)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_list(current: list[Any], patch: list[Any], key: str, field: str) -> list[Any]:
    """Merge two lists of objects element by element on `key`."""
    result = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            if isinstance(item, dict) and item.get("$patch") == "replace":
                return [x for x in patch if not (isinstance(x, dict) and x.get("$patch"))]
            result.append(copy.deepcopy(item))
            continue
        idx = next((i for i, x in enumerate(result) if isinstance(x, dict) and x.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                result.pop(idx)
        elif idx is None:
            result.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            result[idx] = strategic_merge(result[idx], item, field)
    return result
