"""The rest of etcd 3.5's command line: flags etcdpy accepts without acting on, Go-style
single-dash flags, the ``ETCD_*`` environment rules and ``--config-file``.

Why accept flags that do nothing: etcd command lines (systemd units, kubeadm static-pod
manifests, Helm charts) carry tuning and feature flags that matter to etcd's Go
runtime, bbolt or v2 API but not to etcdpy; refusing them would make etcdpy unusable as
a drop-in. Each one is still validated like etcd validates it, and when it is set the
member logs one line saying it has no effect here. Flags whose silent acceptance would
be unsafe (discovery, the v2 proxy) are refused with one line instead.

The value kinds mirror Go's flag types: ``bool`` (strconv.ParseBool), ``int``/``uint``,
``duration`` (time.ParseDuration), ``str``, ``urls`` (comma-separated) and ``choice``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class FlagValueError(ValueError):
    """A flag, variable or config-file value that etcd would refuse too."""


# ------------------------------------------------------------------ value parsers (Go's rules)

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")


def parse_duration(value: str) -> float:
    """A Go duration ("10m", "100ms", "1m30s", "0") in seconds."""
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise FlagValueError(f"invalid duration {value!r}")
    return sign * total


def parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool."""
    v = value.strip()
    if v in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if v in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise FlagValueError(f"invalid boolean value {value!r}")


def _parse_int(value: str, unsigned: bool) -> int:
    try:
        n = int(value.strip(), 0) if value.strip().startswith(("0x", "0X")) else int(value.strip())
    except ValueError:
        raise FlagValueError(f"invalid integer {value!r}") from None
    if unsigned and n < 0:
        raise FlagValueError(f"must not be negative: {value}")
    return n


def kind_parser(kind: str) -> Callable[[str], Any]:
    """The validator of one value kind; ``choice:a|b`` accepts exactly those words."""
    if kind == "bool":
        return parse_bool
    if kind in ("int", "uint"):
        return lambda v: _parse_int(v, kind == "uint")
    if kind == "duration":
        return lambda v: parse_duration(v) if v.strip() else 0.0
    if kind.startswith("choice:"):
        allowed = kind.split(":", 1)[1].split("|")

        def choice(v: str) -> str:
            if v not in allowed:
                raise FlagValueError(f"invalid value {v!r} (want one of {', '.join(allowed)})")
            return v

        return choice
    return str


# ------------------------------------------------------------------ flags without effect


@dataclass(frozen=True)
class NoEffectFlag:
    """An etcd 3.5 flag etcdpy takes and validates but does not act on.

    ``fixed``: etcdpy always behaves as if the flag had this value (e.g. pre-vote on), so
    only another value earns the note. ``refuse``: values (other than the default) that
    would make etcd do something etcdpy cannot and must not silently skip.
    """

    name: str
    kind: str
    default: str
    why: str
    fixed: str | None = None
    refuse: bool = False


def _f(name: str, kind: str, default: str, why: str, fixed: str | None = None, refuse: bool = False) -> NoEffectFlag:
    return NoEffectFlag(name, kind, default, why, fixed, refuse)


_GO = "a knob of etcd's Go runtime or gRPC-Go server"
_BBOLT = "etcdpy's backend is RocksDB, not bbolt"
_V2 = "etcdpy serves the v3 API only"
_TLS = "not implemented by etcdpy's TLS setup"
_TRACE = "etcdpy has no OpenTelemetry tracing"

NO_EFFECT_FLAGS: tuple[NoEffectFlag, ...] = (
    # Member
    _f("initial-election-tick-advance", "bool", "true", "etcdpy always fast-forwards a lone voter's election",
       fixed="true"),
    _f("max-snapshots", "uint", "5", "etcdpy keeps its own snapshot files"),
    _f("max-wals", "uint", "5", "etcdpy releases WAL segments as snapshots cover them"),
    _f("backend-bbolt-freelist-type", "choice:map|array", "map", _BBOLT),
    _f("backend-batch-interval", "duration", "", _BBOLT),
    _f("backend-batch-limit", "int", "0", _BBOLT),
    _f("grpc-keepalive-min-time", "duration", "5s", _GO),
    _f("grpc-keepalive-interval", "duration", "2h", _GO),
    _f("grpc-keepalive-timeout", "duration", "20s", _GO),
    _f("socket-reuse-port", "bool", "false", "etcdpy never shares a listening port"),
    _f("socket-reuse-address", "bool", "false", "etcdpy's listeners always set SO_REUSEADDR"),
    _f("max-concurrent-streams", "uint", "4294967295", _GO),
    _f("enable-grpc-gateway", "bool", "true", "etcdpy always serves the /v3 JSON gateway", fixed="true"),
    _f("listen-client-http-urls", "urls", "", "etcdpy serves HTTP next to gRPC on every client URL"),
    # Clustering
    _f("discovery", "str", "", "etcdpy has no discovery client: use --initial-cluster", refuse=True),
    _f("discovery-fallback", "choice:exit|proxy", "proxy", "used only with --discovery"),
    _f("discovery-proxy", "str", "", "used only with --discovery"),
    _f("discovery-srv", "str", "", "etcdpy has no DNS discovery: use --initial-cluster", refuse=True),
    _f("discovery-srv-name", "str", "", "used only with --discovery-srv"),
    _f("strict-reconfig-check", "bool", "true", "etcdpy always refuses reconfigurations that would lose quorum",
       fixed="true"),
    _f("pre-vote", "bool", "true", "etcdpy's raft always runs PreVote", fixed="true"),
    _f("enable-v2", "bool", "false", _V2, fixed="false"),
    _f("v2-deprecation", "choice:not-yet|write-only|write-only-drop-data|gone", "not-yet", _V2),
    _f("experimental-enable-v2v3", "str", "", _V2),
    # Security
    _f("client-crl-file", "str", "", _TLS),
    _f("client-cert-allowed-hostname", "str", "", _TLS),
    _f("auto-tls", "bool", "false", "etcdpy does not generate certificates"),
    _f("peer-auto-tls", "bool", "false", "etcdpy does not generate certificates"),
    _f("self-signed-cert-validity", "uint", "1", "etcdpy does not generate certificates"),
    _f("peer-cert-allowed-cn", "str", "", _TLS),
    _f("peer-cert-allowed-hostname", "str", "", _TLS),
    _f("peer-crl-file", "str", "", _TLS),
    _f("cipher-suites", "str", "", "the TLS library picks the cipher suites"),
    _f("tls-min-version", "str", "", "the TLS library picks the versions"),
    _f("tls-max-version", "str", "", "the TLS library picks the versions"),
    _f("client-cert-file", "str", "", "etcdpy's members dial each other with --peer-cert-file"),
    _f("client-key-file", "str", "", "etcdpy's members dial each other with --peer-key-file"),
    _f("peer-client-cert-file", "str", "", "etcdpy's members dial each other with --peer-cert-file"),
    _f("peer-client-key-file", "str", "", "etcdpy's members dial each other with --peer-key-file"),
    _f("experimental-peer-skip-client-san-verification", "bool", "false", _TLS),
    _f("cors", "str", "*", "etcdpy's HTTP endpoints send no CORS headers"),
    _f("host-whitelist", "str", "*", "etcdpy does not check the Host header"),
    # Profiling, monitoring, logging
    _f("enable-pprof", "bool", "false", "Go's profiler; use py-spy on etcdpy"),
    _f("metrics", "choice:basic|extensive", "basic", "etcdpy always exports the same metrics"),
    _f("enable-log-rotation", "bool", "false", "rotate the log files with logrotate"),
    _f("log-rotation-config-json", "str",
       '{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}',
       "rotate the log files with logrotate"),
    _f("log-format", "choice:json|console", "json", "etcdpy always logs JSON lines"),
    _f("experimental-enable-distributed-tracing", "bool", "false", _TRACE),
    _f("experimental-distributed-tracing-address", "str", "localhost:4317", _TRACE),
    _f("experimental-distributed-tracing-service-name", "str", "etcd", _TRACE),
    _f("experimental-distributed-tracing-instance-id", "str", "", _TRACE),
    _f("experimental-distributed-tracing-sampling-rate", "int", "0", _TRACE),
    # v2 proxy
    _f("proxy", "choice:off|readonly|on", "off", "etcdpy has no v2 proxy mode", refuse=True),
    _f("proxy-failure-wait", "uint", "5000", "etcdpy has no v2 proxy mode"),
    _f("proxy-refresh-interval", "uint", "30000", "etcdpy has no v2 proxy mode"),
    _f("proxy-dial-timeout", "uint", "1000", "etcdpy has no v2 proxy mode"),
    _f("proxy-write-timeout", "uint", "5000", "etcdpy has no v2 proxy mode"),
    _f("proxy-read-timeout", "uint", "0", "etcdpy has no v2 proxy mode"),
    # Experimental
    _f("experimental-corrupt-check-time", "duration", "0s", "etcdpy runs the corruption check only at start"),
    _f("experimental-compact-hash-check-enabled", "bool", "false", "etcdpy runs the corruption check only at start"),
    _f("experimental-compact-hash-check-time", "duration", "1m", "etcdpy runs the corruption check only at start"),
    _f("experimental-enable-lease-checkpoint", "bool", "false", "etcdpy's leader renews TTLs after a leader change"),
    _f("experimental-enable-lease-checkpoint-persist", "bool", "false",
       "etcdpy's leader renews TTLs after a leader change"),
    _f("experimental-compaction-batch-limit", "int", "1000", "etcdpy compacts in one RocksDB range delete"),
    _f("experimental-compaction-sleep-interval", "duration", "10ms", "etcdpy compacts in one RocksDB range delete"),
    _f("experimental-warning-apply-duration", "duration", "100ms", "etcdpy logs no slow-apply warnings"),
    _f("experimental-warning-unary-request-duration", "duration", "300ms", "etcdpy logs no slow-request warnings"),
    _f("experimental-txn-mode-write-with-shared-buffer", "bool", "true", _BBOLT),
    _f("experimental-bootstrap-defrag-threshold-megabytes", "uint", "0", _BBOLT),
    _f("experimental-memory-mlock", "bool", "false", _BBOLT),
    _f("experimental-stop-grpc-service-on-defrag", "bool", "false", "etcdpy keeps serving during a defrag"),
    _f("experimental-downgrade-check-time", "duration", "5s", "etcdpy does not implement downgrades"),
    _f("experimental-max-learners", "int", "1", "etcdpy allows one learner, etcd's default"),
    _f("experimental-wait-cluster-ready-timeout", "duration", "5s", "etcdpy serves once it has a leader"),
    _f("unsafe-no-fsync", "bool", "false", "etcdpy always fsyncs its WAL"),
)

# etcd accepts these leftovers of older releases and ignores them without a word.
IGNORED_FLAGS: tuple[str, ...] = (
    "cluster-active-size", "cluster-remove-delay", "cluster-sync-interval", "config", "force",
    "max-result-buffer", "max-retry-attempts", "peer-heartbeat-interval", "peer-election-timeout",
    "retry-interval", "snapshot", "v", "vv",
)


def no_effect_note(flag: NoEffectFlag, raw: str) -> str | None:
    """The one-line note for a set flag, None when etcdpy already behaves that way.

    Raises FlagValueError for a value etcdpy must refuse (see `NoEffectFlag.refuse`).
    """
    value = kind_parser(flag.kind)(raw)
    if flag.refuse and raw not in ("", flag.default):
        raise FlagValueError(f"--{flag.name}={raw} is not supported: {flag.why}")
    if flag.fixed is not None and value == kind_parser(flag.kind)(flag.fixed):
        return None
    return f"--{flag.name} has no effect in etcdpy ({flag.why})"


# ------------------------------------------------------------------ Go-style command lines


def go_style_argv(argv: Iterable[str], value_flags: set[str], bool_flags: set[str]) -> list[str]:
    """Rewrite Go's single-dash flags (``-name x``, ``-name=x``) as ``--name``.

    Only tokens in flag position are touched: the word after a value-taking flag is a
    value even if it starts with a dash. ``-h`` and ``-help`` mean help, as in Go.
    """
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if tok == "--":
            out.extend(args[i - 1:])
            break
        if tok.startswith("-") and len(tok) > 1 and not tok[1:2].isdigit():
            body = tok.lstrip("-")
            name = body.split("=", 1)[0]
            if name in ("h", "help"):
                out.append("--help")
                continue
            if name in value_flags or name in bool_flags or name in ("version", "config-file"):
                out.append("--" + body)
                if "=" not in body and name in value_flags and i < len(args):
                    out.append(args[i])  # the value, verbatim
                    i += 1
                continue
        out.append(tok)
    return out


# ------------------------------------------------------------------ the ETCD_* environment


def env_name(flag: str) -> str:
    return "ETCD_" + flag.upper().replace("-", "_")


def unknown_env(environ: Mapping[str, str], known_flags: Iterable[str]) -> list[str]:
    """``KEY=value`` of every ETCD_* variable that names no flag (etcd warns about each)."""
    known = {env_name(f) for f in known_flags}
    return sorted(f"{k}={v}" for k, v in environ.items() if k.startswith("ETCD_") and k not in known)


# ------------------------------------------------------------------ --config-file


class ConfigFileError(Exception):
    """The config file cannot be read or holds something etcd would refuse (one line)."""


# etcd's YAML nests the TLS settings: <section>: {<key>: ...} -> flag name.
_TLS_SECTIONS = {
    "client-transport-security": {
        "cert-file": "cert-file", "key-file": "key-file", "client-cert-auth": "client-cert-auth",
        "trusted-ca-file": "trusted-ca-file", "auto-tls": "auto-tls", "crl-file": "client-crl-file",
        "allowed-hostname": "client-cert-allowed-hostname", "client-cert-file": "client-cert-file",
        "client-key-file": "client-key-file",
    },
    "peer-transport-security": {
        "cert-file": "peer-cert-file", "key-file": "peer-key-file", "client-cert-auth": "peer-client-cert-auth",
        "trusted-ca-file": "peer-trusted-ca-file", "auto-tls": "peer-auto-tls", "crl-file": "peer-crl-file",
        "allowed-cn": "peer-cert-allowed-cn", "allowed-hostname": "peer-cert-allowed-hostname",
        "skip-client-san-verification": "experimental-peer-skip-client-san-verification",
        "client-cert-file": "peer-client-cert-file", "client-key-file": "peer-client-key-file",
    },
}


def _yaml_scalar(key: str, value: Any, duration: bool) -> str:
    """A YAML value as the flag text it stands for.

    etcd reads the file through Go's JSON rules: a duration is an integer of nanoseconds,
    a URL list a comma-separated string, log-outputs a list.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}ns" if duration else str(value)
    if isinstance(value, float):
        return f"{value}ns" if duration else repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        return ",".join(str(v) for v in value)
    raise ConfigFileError(f"config file key {key!r}: unexpected value {value!r}")


def load_config_file(path: str, known_flags: Mapping[str, bool]) -> tuple[dict[str, str], list[str]]:
    """Read etcd's YAML config file: (flag name -> value text, keys it ignored).

    ``known_flags`` maps each flag name to True when its value is a duration. Unknown keys
    are ignored as etcd ignores them (and reported back, for a warning).
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise ConfigFileError(f"cannot read config file {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigFileError(f"cannot parse config file {path!r}{at}: {problem}") from None
    if doc is None:
        return {}, []
    if not isinstance(doc, dict):
        raise ConfigFileError(f"config file {path!r} must hold a mapping of etcd's keys, not {type(doc).__name__}")
    values: dict[str, str] = {}
    ignored: list[str] = []
    for key, value in doc.items():
        key = str(key)
        if value is None:
            continue
        if key in _TLS_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigFileError(f"config file key {key!r} must be a mapping")
            for sub, v in value.items():
                flag = _TLS_SECTIONS[key].get(str(sub))
                if flag is None:
                    ignored.append(f"{key}.{sub}")
                elif v is not None:
                    values[flag] = _yaml_scalar(f"{key}.{sub}", v, False)
        elif key in known_flags:
            values[key] = _yaml_scalar(key, value, known_flags[key])
        else:
            ignored.append(key)
    return values, ignored

