"""Structured JSON logs in the shape of etcd's zap logger (level, ts, caller, msg, fields)."""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR,
          "panic": logging.CRITICAL, "fatal": logging.CRITICAL}
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error",
          logging.CRITICAL: "fatal"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, object] = {
            "level": _NAMES.get(record.levelno, record.levelname.lower()),
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "caller": f"{record.module}:{record.lineno}",
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _handler(output: str) -> logging.Handler:
    """One --log-outputs target: 'default'/'stderr', 'stdout', or a file appended to."""
    if output in ("default", "stderr"):
        return logging.StreamHandler(sys.stderr)
    if output == "stdout":
        return logging.StreamHandler(sys.stdout)
    return logging.FileHandler(output, mode="a", encoding="utf-8")


def setup_logging(level: str, outputs: list[str] | None = None) -> logging.Logger:
    """JSON lines to every output (etcd's --log-outputs); raises OSError when a file cannot be opened."""
    handlers = [_handler(o) for o in (outputs or ["default"])]
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger("etcdpy")
    root.handlers[:] = handlers
    root.setLevel(LEVELS[level])
    root.propagate = False
    return root
