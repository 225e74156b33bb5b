"""Who the TLS client certificate says the caller is (etcd's AuthInfoFromTLS).

With `--client-cert-auth`, etcd takes the verified client certificate's common
name as the user name when a request carries no auth token. The order matters
and belongs to the auth layer: token first; the certificate's CN only when no
token was sent and client-cert-auth is on.
"""

from __future__ import annotations

from typing import Any


def peer_common_name(context: Any) -> str | None:
    """The CN of the client's verified certificate on this gRPC call, or None.

    None when the connection is not TLS, or the server did not ask for a client
    certificate (no --client-cert-auth): gRPC only fills `x509_common_name` for a
    certificate it verified against --trusted-ca-file.
    """
    try:
        auth = context.auth_context()
    except Exception:  # noqa: BLE001 - no auth context on this call (e.g. a test double)
        return None
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    names = auth.get("x509_common_name")
    if not names:
        return None
    name = names[0]
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
