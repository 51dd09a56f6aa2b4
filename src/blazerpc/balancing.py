"""Where a client's calls go: one address, several, or a `dns:///` name; balanced call by call.

Every client channel uses gRPC's `round_robin` policy with client-side health checking, so a
replica that reports NOT_SERVING (loading or draining) gets no new calls, and a retry policy
that retries UNAVAILABLE. Retrying UNAVAILABLE is safe here because of a server contract: a
call carrying the `ADMISSION_HEADERS` metadata gets its response headers as soon as the
server admits it, before the model runs, and gRPC never retries a call once headers have
arrived. So only a refusal (the draining or starting gate, or a connection that failed
before admission) is ever retried, never a call that may have reached the model (one on a
replica that died mid-call), unless that model runs inline: a cheap plain `def` answers
within microseconds of its start, too soon for headers to matter. Clients without a retry
policy do not ask, and do not pay for the extra write of early headers.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence

DEFAULT_PORT = 50051
# Metadata a client sends to have the server send headers on admission (see above).
ADMISSION_HEADERS = ("blazerpc-admission-headers", "1")
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")

# gRPC caps maxAttempts at 5. Backoff is random in [0, current]: at most about 1.7 s in all,
# about as long as a Kubernetes Service takes to drop a draining pod's endpoint.
_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [
        {
            "name": [{"service": "blazerpc.InferenceService"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 3,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
SERVICE_CONFIG = json.dumps(_CONFIG)
# Without client-side health checking, for servers whose health service is broken (blazerpc
# 2.2.1's answers UNKNOWN, which gRPC reads as unhealthy; only UNIMPLEMENTED reads as absent).
SERVICE_CONFIG_NO_HEALTH = json.dumps(
    {k: v for k, v in _CONFIG.items() if k != "healthCheckConfig"}
)


def channel_target(host: str | Sequence[str], port: int | None) -> str:
    """The gRPC target for `host` and `port`.

    `host` is a host name or IP address (with `port`), a gRPC target URI such as
    `dns:///model.ns.svc.cluster.local:50051` (which carries its own port), or a list of
    `HOST:PORT` addresses; names in a list are resolved once, here.
    """
    if isinstance(host, str):
        if host.startswith(_SCHEMES):
            if port is not None:
                raise ValueError(f"'{host}' is a target with its own port; do not pass port")
            return host
        return _join(host, DEFAULT_PORT if port is None else port)
    if port is not None:
        raise ValueError("a list of addresses gives a port in each, as 'HOST:PORT'; drop port")
    if not host:
        raise ValueError("the list of addresses is empty")
    addresses = [_resolve(address) for address in host]
    families = {ip.version for ip, _ in addresses}
    if len(families) > 1:
        raise ValueError(f"addresses {list(host)} mix IPv4 and IPv6; gRPC takes one family")
    scheme = "ipv4" if families == {4} else "ipv6"
    return f"{scheme}:" + ",".join(_join(str(ip), p) for ip, p in addresses)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _resolve(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address '{address}' is not of the form HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    try:
        return ipaddress.ip_address(host), int(port)
    except ValueError:
        pass
    try:
        info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve '{host}' in address '{address}': {exc}") from None
    return ipaddress.ip_address(info[0][4][0]), int(port)
