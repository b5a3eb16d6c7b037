"""Which host names and addresses are this machine's own (loopback).

:func:`is_loopback` is the one test the broker applies wherever plain http or a
listener reachable from elsewhere must be refused: the dev mode's listen
addresses (``server.config``) and OIDC issuers and their endpoints
(``server.identity``), which may use http only on loopback.  A name counts only
when it is ``localhost`` itself or a loopback IP literal: any other name may
resolve anywhere.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (``127.0.0.0/8``, ``::1``, IPv4-mapped)."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if name.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
