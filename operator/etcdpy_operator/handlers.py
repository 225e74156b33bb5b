"""kopf wiring, kept thin: one daemon per EtcdCluster runs the reconcile loop; spec changes wake it."""

from __future__ import annotations

from typing import Any

import kopf

from etcdpy_operator import GROUP, PLURAL, VERSION
from etcdpy_operator.reconcile import Runtime, run_cluster


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    """Register the handlers on `registry` (no global registry, so tests can build their own)."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A private registry does not get kopf's default login handlers; use the client's own config.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf's bookkeeping in annotations: the status schema is ours and would prune status.kopf.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.posting.level = 30  # kopf's own events: warnings and errors only
        settings.watching.server_timeout = 60
        settings.networking.request_timeout = 30

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, initial_delay=0, cancellation_timeout=10)
    async def cluster_loop(name: str, namespace: str | None, stopped: Any, logger: Any, **_: Any) -> None:
        await run_cluster(rt, namespace or "default", name, stopped, logger)

    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
    async def spec_changed(name: str, namespace: str | None, **_: Any) -> None:
        rt.wake(namespace or "default", name)
