"""TLS settings of the client and peer listeners (etcd's transport.TLSInfo) turned into credentials.

etcd's flags name PEM files; this module reads them once, at start-up, and fails
with one clear line (`TLSConfigError`) when a file is missing or unreadable, so
a misconfigured member never starts half-secured. `grpc` and `ssl` are imported
inside the functions: the configuration can be built and validated without them.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


class TLSConfigError(Exception):
    """A TLS flag combination or file that cannot work (one line, shown to the operator)."""


@dataclass(frozen=True)
class TLSInfo:
    """One side's TLS flags: --cert-file/--key-file/--trusted-ca-file/--client-cert-auth or their --peer-* twins."""

    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    flag_prefix: str = ""
    """"" for the client flags, "peer-" for the peer flags (only used in error messages)."""

    @property
    def empty(self) -> bool:
        """etcd's TLSInfo.Empty: no certificate and key to serve with."""
        return not self.cert_file and not self.key_file

    def check(self, urls: list[str], kind: str) -> None:
        """Refuse https URLs without a certificate, and half-configured flags, as etcd does."""
        p = self.flag_prefix
        https = [u for u in urls if u.startswith("https://")]
        if https and self.empty:
            raise TLSConfigError(
                f"TLS key/cert (--{p}cert-file, --{p}key-file) must be provided for {kind} url {https[0]} "
                "with HTTPS scheme"
            )
        if bool(self.cert_file) != bool(self.key_file):
            raise TLSConfigError(f"--{p}cert-file and --{p}key-file must be given together")
        if self.client_cert_auth and not self.trusted_ca_file:
            raise TLSConfigError(f"--{p}client-cert-auth needs --{p}trusted-ca-file to verify client certificates")

    def _read(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise TLSConfigError(f"open {path}: {(e.strerror or str(e)).lower()}") from e

    @property
    def verify_clients(self) -> bool:
        """etcd requires and verifies client certificates when a trusted CA is given OR
        --client-cert-auth is on (transport.TLSInfo.ServerConfig); the flag alone additionally
        makes the certificate's CN an auth user name (that part belongs to the auth layer)."""
        return bool(self.trusted_ca_file) or self.client_cert_auth

    def server_credentials(self) -> "grpc.ServerCredentials":
        """gRPC server credentials with etcd's client-certificate policy (see `verify_clients`)."""
        import grpc

        key, cert = self._read(self.key_file), self._read(self.cert_file)
        if self.verify_clients:
            return grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=self._read(self.trusted_ca_file), require_client_auth=True
            )
        return grpc.ssl_server_credentials([(key, cert)])

    def channel_credentials(self) -> "grpc.ChannelCredentials":
        """gRPC client credentials for dialing a member that serves with these flags' CA.

        For the peer transport: the peer certificate doubles as the client certificate
        (etcd presents --peer-cert-file when dialing), the peer CA verifies the server.
        """
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.trusted_ca_file) if self.trusted_ca_file else None,
            private_key=self._read(self.key_file) if self.key_file else None,
            certificate_chain=self._read(self.cert_file) if self.cert_file else None,
        )

    def ssl_server_context(self) -> ssl.SSLContext:
        """A Python `ssl` context with the same policy, for the (low-traffic) HTTPS metrics listener."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        for path in (self.cert_file, self.key_file):
            self._read(path)  # a one-line error for a missing file, before ssl's own
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
            if self.verify_clients:
                ctx.load_verify_locations(self.trusted_ca_file)
                ctx.verify_mode = ssl.CERT_REQUIRED
        except ssl.SSLError as e:
            raise TLSConfigError(f"cannot load TLS certificate/key: {e.reason or e}") from e
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx
