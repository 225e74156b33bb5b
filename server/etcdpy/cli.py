"""The `etcdpy` command: etcd's server flags (each with its ETCD_* environment twin) and subcommands.

`etcdpy [flags]` runs a member, like `etcd`. `etcdpy bench ...` runs the
benchmark. A bad flag, a port in use or an unusable data dir ends the process
with one clear line on stderr and a non-zero exit, before anything is written.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from etcdpy import ETCD_VERSION, __version__
from etcdpy.config import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_SNAPSHOT_COUNT,
    DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
    SNAPSHOT_CATCHUP_ENTRIES,
    ServerConfig,
    url_host_port,
)
from etcdpy.log import LEVELS, setup_logging


def _urls(value: str) -> list[str]:
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise argparse.ArgumentTypeError("expected at least one URL")
    for u in urls:
        try:
            url_host_port(u, 0)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return urls


def _non_negative_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return n


def _positive_int(value: str) -> int:
    n = _non_negative_int(value)
    if n == 0:
        raise argparse.ArgumentTypeError("must be positive")
    return n


def _duration(value: str) -> float:
    """A Go duration ("10m", "100ms", "1m30s", "0") in seconds, as etcd's duration flags take."""
    from etcdpy.etcdflags import FlagValueError, parse_duration

    try:
        return parse_duration(value)
    except FlagValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _log_level(value: str) -> str:
    if value not in LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {value!r} (want one of {', '.join(LEVELS)})")
    return value


def _auth_token(value: str) -> str:
    """etcd's --auth-token is "<type>[,<option>=<value>...]"; etcdpy issues simple tokens only."""
    kind = value.split(",", 1)[0]
    if kind != "simple":
        raise argparse.ArgumentTypeError(f"auth token type {kind!r} is not supported (want 'simple')")
    return value


def _bcrypt_cost(value: str) -> int:
    n = _positive_int(value)
    if not 4 <= n <= 31:
        raise argparse.ArgumentTypeError(f"must be between 4 and 31: {value}")
    return n


def _bool(value: str) -> bool:
    """Go's strconv.ParseBool, as etcd parses boolean flags and their ETCD_* twins."""
    from etcdpy.etcdflags import FlagValueError, parse_bool

    try:
        return parse_bool(value)
    except FlagValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _compaction_mode(value: str) -> str:
    from etcdpy.server.compactor import MODES

    if value not in MODES:
        raise argparse.ArgumentTypeError(f"unknown auto-compaction-mode {value!r} (want one of {', '.join(MODES)})")
    return value


def _compaction_retention(value: str) -> str:
    """Hours or revisions as a bare integer, else a Go duration (e.g. 30m); checked here, used by the compactor."""
    from etcdpy.server.compactor import MODE_PERIODIC, RetentionError, parse_retention

    try:
        if parse_retention(MODE_PERIODIC, value) < 0:
            raise RetentionError("negative retention")
    except RetentionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _grpc_server(value: str) -> str:
    from etcdpy.api.grpcbackend import BACKENDS

    if value.strip().lower() not in BACKENDS:
        raise argparse.ArgumentTypeError(f"invalid value {value!r} (want one of {', '.join(BACKENDS)})")
    return value.strip().lower()


def _logger(value: str) -> str:
    """etcd 3.5 only has zap; capnslog was removed in 3.5 (etcd's words)."""
    if value == "capnslog":
        raise argparse.ArgumentTypeError("--logger=capnslog is removed in v3.5")
    if value != "zap":
        raise argparse.ArgumentTypeError(f"unknown logger option {value!r}")
    return value


def _log_outputs(value: str) -> list[str]:
    outs = [o.strip() for o in value.split(",") if o.strip()]
    if not outs:
        raise argparse.ArgumentTypeError("expected at least one output")
    if "default" in outs and len(outs) > 1:
        raise argparse.ArgumentTypeError("'default' cannot be combined with other outputs")
    return outs


def _cluster_state(value: str) -> str:
    if value not in ("new", "existing"):
        raise argparse.ArgumentTypeError(f"invalid value {value!r} (want 'new' or 'existing')")
    return value


# flag name, type, default, help — defaults are etcd's.
FLAGS: list[tuple[str, Callable[[str], Any], Any, str]] = [
    ("name", str, "default", "human-readable name for this member"),
    ("data-dir", str, None, "path to the data directory"),
    ("listen-client-urls", _urls, ["http://localhost:2379"], "URLs to listen on for client traffic"),
    ("advertise-client-urls", _urls, ["http://localhost:2379"], "client URLs advertised to the cluster"),
    ("listen-peer-urls", _urls, ["http://localhost:2380"], "URLs to listen on for peer traffic"),
    ("initial-advertise-peer-urls", _urls, ["http://localhost:2380"], "peer URLs advertised to the cluster"),
    ("initial-cluster", str, None, "initial cluster configuration for bootstrapping (name=url,...)"),
    ("initial-cluster-state", _cluster_state, "new", "'new' or 'existing'"),
    ("initial-cluster-token", str, "etcd-cluster", "initial cluster token for the bootstrap"),
    ("snapshot-count", _positive_int, DEFAULT_SNAPSHOT_COUNT, "committed transactions that trigger a snapshot"),
    ("quota-backend-bytes", _non_negative_int, 0, "raise an alarm when the backend exceeds this size (0 = 2 GiB)"),
    ("max-request-bytes", _positive_int, DEFAULT_MAX_REQUEST_BYTES, "maximum client request size in bytes"),
    ("max-txn-ops", _positive_int, 128, "maximum number of operations permitted in a transaction"),
    ("auth-token", _auth_token, "simple", "kind of auth token: 'simple' (random, held in memory by every member)"),
    ("auth-token-ttl", _positive_int, 300, "seconds an unused simple token stays valid"),
    ("bcrypt-cost", _bcrypt_cost, 10, "bcrypt cost (4-31) of stored password hashes"),
    ("heartbeat-interval", _positive_int, 100, "time (in milliseconds) of a heartbeat interval"),
    ("election-timeout", _positive_int, 1000, "time (in milliseconds) for an election to timeout"),
    ("log-level", _log_level, "info", "debug, info, warn, error, panic or fatal"),
    ("auto-compaction-mode", _compaction_mode, "periodic", "how to read --auto-compaction-retention: periodic or revision"),
    (
        "auto-compaction-retention",
        _compaction_retention,
        "0",
        "history to keep: a duration or hours (periodic), or revisions (revision); 0 disables auto-compaction",
    ),
    ("listen-metrics-urls", _urls, [], "URLs to serve /metrics and the health endpoints on"),
    ("force-new-cluster", _bool, False, "restart this member's data as a one-member cluster (disaster recovery)"),
    ("cert-file", str, "", "path to the client server TLS cert file"),
    ("key-file", str, "", "path to the client server TLS key file"),
    ("trusted-ca-file", str, "", "path to the client server TLS trusted CA cert file"),
    ("client-cert-auth", _bool, False, "enable client cert authentication"),
    ("peer-cert-file", str, "", "path to the peer server TLS cert file"),
    ("peer-key-file", str, "", "path to the peer server TLS key file"),
    ("peer-trusted-ca-file", str, "", "path to the peer server TLS trusted CA file"),
    ("peer-client-cert-auth", _bool, False, "enable peer client cert authentication"),
    (
        "experimental-watch-progress-notify-interval",
        _duration,
        DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
        "duration of periodic watch progress notifications (Go duration, e.g. 10m, 500ms)",
    ),
    ("experimental-grpc-server", _grpc_server, "", "client-port gRPC server: native (the default) or grpcio ($ETCDPY_GRPC_SERVER)"),
    ("wal-dir", str, "", "path to a dedicated WAL directory (empty: member/wal in the data dir)"),
    ("logger", _logger, "zap", "'zap': structured JSON logs (the only logger of etcd 3.5)"),
    ("log-outputs", _log_outputs, ["default"], "'default', 'stderr', 'stdout' or file paths, comma-separated"),
    (
        "experimental-initial-corrupt-check",
        _bool,
        False,
        "before serving, compare this member's KV hash with its peers' and refuse to start on a mismatch",
    ),
    ("experimental-snapshot-catchup-entries", _positive_int, SNAPSHOT_CATCHUP_ENTRIES,
     "raft entries kept after a snapshot for slow followers to catch up from"),
]

NOTE = tuple[str, str, dict[str, Any]]  # (level, message, fields) logged once logging is set up


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"etcdpy: error: {message}\n")
        raise SystemExit(2)


_USAGE = """etcdpy [flags]                   run a member (etcd's flags; each has an ETCD_* twin)
       etcdpy --config-file FILE        run a member configured by etcd's YAML file (flags and ETCD_* ignored)
       etcdpy snapshot save|status|restore ...   snapshot files, etcd's and etcdpy's (etcdutl's subcommands)
       etcdpy bench ...                 the benchmark (etcdpy bench --help)
       etcdpy -version | --version      print the version
       etcdpy -h | --help               this help"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """One line per flag, as etcd's help: long lines wrap in the terminal, not mid-default."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=48, width=10_000)


def _default_text(default: Any) -> str:
    if default is None:
        return ""
    if isinstance(default, list):
        return ",".join(default)
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float):
        return f"{default:g}s"
    return str(default)


def _takes_bool(typ: Callable[[str], Any]) -> bool:
    return typ is _bool


def build_parser() -> argparse.ArgumentParser:
    """Every etcd 3.5 flag; values stay raw text here and are checked in `resolve` (flag, env or file alike)."""
    from etcdpy.etcdflags import IGNORED_FLAGS, NO_EFFECT_FLAGS

    p = _Parser(prog="etcdpy", usage=_USAGE, description="An etcd-compatible key-value server.",
                allow_abbrev=False, formatter_class=_HelpFormatter,
                epilog="Flags marked 'no effect' are accepted for etcd compatibility and logged when set.")
    g = p.add_argument_group("flags")
    for name, typ, default, help_ in FLAGS:
        # A boolean flag may stand alone (--client-cert-auth) or take a value (=false), as in Go.
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if _takes_bool(typ) else {}
        shown = {"data-dir": "${name}.etcd", "initial-cluster": "${name}=${initial-advertise-peer-urls}"}.get(
            name, _default_text(default))
        g.add_argument(f"--{name}", default=None, metavar="", help=f"{help_} (default: {shown!r}) [${env_name(name)}]",
                       **extra)
    g.add_argument("--config-file", default=None, metavar="",
                   help="etcd's YAML configuration file; when given, other flags and ETCD_* variables are ignored "
                   "[$ETCD_CONFIG_FILE]")
    n = p.add_argument_group("accepted for etcd compatibility, no effect in etcdpy")
    for f in NO_EFFECT_FLAGS:
        extra = {"nargs": "?", "const": "true"} if f.kind == "bool" else {}
        refused = "; other values refused" if f.refuse else ""
        n.add_argument(f"--{f.name}", default=None, metavar="",
                       help=f"{f.why}{refused} (default: {f.default!r})", **extra)
    for name in IGNORED_FLAGS:
        p.add_argument(f"--{name}", default=None, nargs="?", const="", help=argparse.SUPPRESS)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def env_name(flag: str) -> str:
    return "ETCD_" + flag.upper().replace("-", "_")


def _all_flag_names() -> list[str]:
    from etcdpy.etcdflags import IGNORED_FLAGS, NO_EFFECT_FLAGS

    return [f[0] for f in FLAGS] + [f.name for f in NO_EFFECT_FLAGS] + list(IGNORED_FLAGS) + ["config-file"]


def _raw_values(
    ns: argparse.Namespace, environ: dict[str, str], parser: argparse.ArgumentParser
) -> tuple[dict[str, tuple[str, str]], list[NOTE]]:
    """name -> (raw text, where it came from), from the config file or else flags and ETCD_*.

    etcd's rules: a config file (--config-file or ETCD_CONFIG_FILE) replaces every other
    flag and variable; without one, an ETCD_* variable fills in a flag not given, a variable
    that shadows a given flag is an error, and one that names no flag earns a warning.
    """
    from etcdpy.etcdflags import (
        NO_EFFECT_FLAGS,
        ConfigFileError,
        load_config_file,
        unknown_env,
    )

    notes: list[NOTE] = []
    config_file = ns.config_file or environ.get("ETCD_CONFIG_FILE", "")
    if config_file:
        durations = {name: typ is _duration for name, typ, _, _ in FLAGS}
        durations.update({f.name: f.kind == "duration" for f in NO_EFFECT_FLAGS})
        try:
            values, ignored = load_config_file(config_file, durations)
        except ConfigFileError as e:
            sys.stderr.write(f"etcdpy: {e}\n")
            raise SystemExit(1) from None
        loaded = ("loaded server configuration, other configuration command line flags and environment variables "
                  "will be ignored if provided")
        notes.append(("info", loaded, {"path": config_file}))
        notes.extend(("warn", "unknown key in config file, ignored", {"path": config_file, "key": k}) for k in ignored)
        return {k: (v, f"config file key {k!r}") for k, v in values.items()}, notes
    out: dict[str, tuple[str, str]] = {}
    for name in _all_flag_names():
        flag_value = getattr(ns, name.replace("-", "_"), None)
        env_value = environ.get(env_name(name))
        if flag_value is not None and env_value is not None:
            parser.error(f"conflicting environment variable {env_name(name)} is shadowed by corresponding "
                         "command-line flag (either unset environment variable or disable flag)")
        if flag_value is not None:
            out[name] = (flag_value, f"--{name}")
        elif env_value is not None:
            out[name] = (env_value, env_name(name))
    for kv in unknown_env(environ, _all_flag_names()):
        notes.append(("warn", "unrecognized environment variable", {"environment-variable": kv}))
    return out, notes


def resolve(ns: argparse.Namespace, environ: dict[str, str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Compatibility wrapper: the checked values only (see `resolve_with_notes`)."""
    return resolve_with_notes(ns, environ, parser)[0]


def resolve_with_notes(
    ns: argparse.Namespace, environ: dict[str, str], parser: argparse.ArgumentParser
) -> tuple[dict[str, Any], list[NOTE]]:
    """Every flag's value (etcd's default when unset), checked alike from flags, ETCD_* or the file."""
    from etcdpy.etcdflags import NO_EFFECT_FLAGS, FlagValueError, no_effect_note

    raw, notes = _raw_values(ns, environ, parser)
    out: dict[str, Any] = {}
    for name, typ, default, _ in FLAGS:
        attr = name.replace("-", "_")
        if name not in raw:
            out[attr] = default
            continue
        text, where = raw[name]
        try:
            out[attr] = typ(text)
        except (argparse.ArgumentTypeError, ValueError) as e:
            parser.error(f"invalid value {text!r} for {where}: {e}")
    for f in NO_EFFECT_FLAGS:
        if f.name not in raw:
            continue
        text, where = raw[f.name]
        try:
            note = no_effect_note(f, text)
        except FlagValueError as e:
            parser.error(f"invalid value {text!r} for {where}: {e}")
        if note is not None:
            notes.append(("warn", note, {"flag": f.name, "value": text}))
    return out, notes


def config_from_args(argv: list[str], environ: dict[str, str] | None = None) -> ServerConfig:
    """The member's configuration (notes about flags without effect are dropped: see `parse_args`)."""
    return parse_args(argv, environ)[0]


def parse_args(argv: list[str], environ: dict[str, str] | None = None) -> tuple[ServerConfig, list[NOTE]]:
    """Command line (Go-style single-dash flags too), ETCD_* and --config-file -> config and notes to log."""
    from etcdpy.etcdflags import NO_EFFECT_FLAGS, go_style_argv
    from etcdpy.server.membership import parse_initial_cluster

    parser = build_parser()
    bools = {name for name, typ, _, _ in FLAGS if _takes_bool(typ)} | {f.name for f in NO_EFFECT_FLAGS if f.kind == "bool"}
    values = {n for n in _all_flag_names() if n not in bools}
    ns = parser.parse_args(go_style_argv(argv, values, bools))
    if ns.version:
        print(f"etcdpy Version: {__version__}\netcd API Version: {ETCD_VERSION}\nPython Version: {sys.version.split()[0]}")
        raise SystemExit(0)
    v, notes = resolve_with_notes(ns, dict(os.environ) if environ is None else environ, parser)
    if v["initial_cluster"]:
        try:
            initial = parse_initial_cluster(v["initial_cluster"])
            for urls in initial.values():
                _urls(",".join(urls))
        except (ValueError, argparse.ArgumentTypeError) as e:
            parser.error(f"invalid --initial-cluster: {e}")
    else:
        # etcd derives the one-member cluster from the name and advertised peer URLs.
        initial = {v["name"]: list(v["initial_advertise_peer_urls"])}
    if v["election_timeout"] < 5 * v["heartbeat_interval"]:
        parser.error("--election-timeout should be at least 5 times --heartbeat-interval")
    cfg = ServerConfig(
        name=v["name"],
        data_dir=v["data_dir"] or "",
        listen_client_urls=v["listen_client_urls"],
        advertise_client_urls=v["advertise_client_urls"],
        listen_peer_urls=v["listen_peer_urls"],
        initial_advertise_peer_urls=v["initial_advertise_peer_urls"],
        initial_cluster=initial,
        initial_cluster_state=v["initial_cluster_state"],
        initial_cluster_token=v["initial_cluster_token"],
        snapshot_count=v["snapshot_count"],
        quota_backend_bytes=v["quota_backend_bytes"],
        max_request_bytes=v["max_request_bytes"],
        max_txn_ops=v["max_txn_ops"],
        auth_token=v["auth_token"],
        auth_token_ttl=v["auth_token_ttl"],
        bcrypt_cost=v["bcrypt_cost"],
        heartbeat_ms=v["heartbeat_interval"],
        election_ms=v["election_timeout"],
        log_level=v["log_level"],
        auto_compaction_mode=v["auto_compaction_mode"],
        auto_compaction_retention=v["auto_compaction_retention"],
        listen_metrics_urls=v["listen_metrics_urls"],
        force_new_cluster=v["force_new_cluster"],
        cert_file=v["cert_file"],
        key_file=v["key_file"],
        trusted_ca_file=v["trusted_ca_file"],
        client_cert_auth=v["client_cert_auth"],
        peer_cert_file=v["peer_cert_file"],
        peer_key_file=v["peer_key_file"],
        peer_trusted_ca_file=v["peer_trusted_ca_file"],
        peer_client_cert_auth=v["peer_client_cert_auth"],
        # etcd keeps its default for a zero or negative interval.
        watch_progress_notify_interval=v["experimental_watch_progress_notify_interval"]
        if v["experimental_watch_progress_notify_interval"] > 0
        else DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
        grpc_server=v["experimental_grpc_server"],
        wal_dir_flag=v["wal_dir"],
        log_outputs=v["log_outputs"],
        initial_corrupt_check=v["experimental_initial_corrupt_check"],
        snapshot_catchup_entries=v["experimental_snapshot_catchup_entries"],
    )
    return cfg, notes


async def serve(cfg: ServerConfig, log: logging.Logger) -> int:
    """Bind the listeners, start the member, serve the client URLs once it is ready, until
    SIGTERM/SIGINT, then stop gracefully."""
    from etcdpy.api.cmux import front_mode
    from etcdpy.api.grpcserver import ListenError, check_bindable
    from etcdpy.api.listeners import Listeners
    from etcdpy.gctuning import gc_setting, tune_after_startup
    from etcdpy.server.etcdserver import EtcdServer, StartupError
    from etcdpy.switchinterval import switch_interval_setting, tune_switch_interval

    try:  # the environment's settings first: a typo there stops the member before it exists
        mode = front_mode()
        switch_interval = switch_interval_setting()
        gc_mode = gc_setting()
    except ValueError as e:
        sys.stderr.write(f"etcdpy: {e}\n")
        return 1
    server = EtcdServer(cfg, log)
    listeners = Listeners(server, log, mode=mode)
    try:
        listeners.bind()
        # Peer ports too, before the data dir is touched: a start that cannot listen leaves nothing.
        for url in cfg.listen_peer_urls:
            host, port, _ = url_host_port(url, 2380)
            check_bindable(host, port)
    except (ListenError, ValueError) as e:
        sys.stderr.write(f"etcdpy: {e}\n")
        await listeners.stop(None)
        return 1
    try:
        await server.start()
    except StartupError as e:
        sys.stderr.write(f"etcdpy: {e}\n")
        await listeners.stop(None)
        return 1
    await listeners.start_metrics()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_task = asyncio.create_task(stop.wait())
    done_task = asyncio.create_task(server.done.wait())
    ready_task = asyncio.create_task(server.ready.wait())
    # etcd serves the client URLs once the member is ready (it has published itself through
    # the log, so it has a leader and its log is current): the same here.
    await asyncio.wait([ready_task, stop_task, done_task], return_when=asyncio.FIRST_COMPLETED)
    if ready_task.done() and not stop_task.done() and not done_task.done():
        await listeners.start()
        log.info("ready to serve client requests", extra={"fields": {"name": cfg.name}})
        tune_after_startup(gc_mode)
        tune_switch_interval(switch_interval)
        await asyncio.wait([stop_task, done_task], return_when=asyncio.FIRST_COMPLETED)
    log.info("received signal; shutting down", extra={"fields": {"name": cfg.name}})
    await listeners.stop(grace=2.0)
    await server.stop()
    for t in (stop_task, done_task, ready_task):
        t.cancel()
    log.info("stopped serving", extra={"fields": {"name": cfg.name}})
    return server.exit_code


ENV_EVENT_LOOP = "ETCDPY_EVENT_LOOP"
EVENT_LOOPS = ("uvloop", "asyncio")


def event_loop_setting(environ: Mapping[str, str] | None = None) -> str:
    """$ETCDPY_EVENT_LOOP as one of `EVENT_LOOPS` (unset is ``uvloop``); raises ValueError, with
    the line the member exits with, for anything else (as for every ``ETCDPY_`` setting)."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_EVENT_LOOP, "").strip().lower() or "uvloop"
    if value not in EVENT_LOOPS:
        raise ValueError(f"{ENV_EVENT_LOOP} must be one of {', '.join(EVENT_LOOPS)}, got {value!r}")
    return value


def _install_event_loop_policy(choice: str) -> None:
    """uvloop when installed: the loop runs every gRPC completion, and uvloop's is cheaper per wake-up.

    Installed as the policy (not just a loop factory) because gRPC's asyncio layer asks the
    policy for the loop. ETCDPY_EVENT_LOOP=asyncio keeps the standard loop (comparisons, debugging).
    """
    if choice == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _no_grpc_fork_handlers() -> None:
    """Keep grpc-core from acting on fork in this process, unless the user chose otherwise.

    grpcio is built with fork support on: every fork() runs its handlers, and the child
    restarts grpc's pollers between fork and exec. A child that then closes its fds (as
    subprocess does before exec) makes such a poller's epoll_wait fail with EBADF and
    grpc-core aborts the child. Measured (grpcio 1.85.3, Python 3.11.7, a process with
    four busy client channels): 17 of 1330 ``Popen(preexec_fn=...)`` children died that
    way with fork support on, 0 of 1851 with ``GRPC_ENABLE_FORK_SUPPORT=false``; without a
    preexec_fn CPython uses vfork, which runs no fork handlers (0 of 3000 with them on).
    etcdpy's own children (snapshot conversion, the front process) are started without a
    preexec_fn and use no gRPC after forking, so the handlers buy nothing here, and with
    them off a fork by any other code (a library, a later change) cannot abort a child
    either. Must run before grpc is imported (grpcio reads the variable then).
    """
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def main(argv: list[str] | None = None) -> int:
    _no_grpc_fork_handlers()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from etcdpy.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "snapshot":
        from etcdpy.etcdutl import main as etcdutl_main

        return etcdutl_main(argv[1:])
    cfg, notes = parse_args(argv)
    try:
        event_loop = event_loop_setting()
    except ValueError as e:
        sys.stderr.write(f"etcdpy: {e}\n")
        return 1
    try:
        log = setup_logging(cfg.log_level, cfg.log_outputs)
    except OSError as e:
        sys.stderr.write(f"etcdpy: cannot open log output: {e}\n")
        return 1
    for level, msg, fields in notes:
        log.log(LEVELS[level], msg, extra={"fields": fields})
    log.info("starting etcdpy", extra={"fields": {"etcdpy-version": __version__, "etcd-api-version": ETCD_VERSION,
                                                  "name": cfg.name, "data-dir": cfg.data_dir}})
    try:
        _install_event_loop_policy(event_loop)
        return asyncio.run(serve(cfg, log))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
