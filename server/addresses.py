"""Which hosts are this machine's own (loopback), and which issuer URLs the broker trusts.

:func:`is_loopback` is the one test the broker applies wherever plain http or a
listener reachable from elsewhere must be refused: the dev mode's listen
addresses (``server.config``) and OIDC issuers and their endpoints
(``server.identity``), which may use http only on loopback.  A name counts only
when it is ``localhost`` itself or a loopback IP literal: any other name may
resolve anywhere.

Issuer URLs are checked by :func:`issuer_url`, in one place, for the server
settings and the policy alike: ``https``, or ``http`` on a loopback host (a
provider on the same machine, as in tests and development), never anything that
could be read or altered on the way.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


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


def issuer_url(text: str) -> str:
    """``text`` as an issuer URL, or ValueError saying what is wrong with it.

    The value is kept as written (a trailing slash included) because the ``iss``
    claim of every token must equal it exactly.
    """
    value = text.strip()
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"{value!r} is not an issuer URL such as https://login.example.com")
    if url.query or url.fragment:
        raise ValueError(f"{value!r}: an issuer URL has no query or fragment")
    if url.scheme == "http" and not is_loopback(url.hostname):
        raise ValueError(f"{value!r}: an issuer must use https (http only on loopback)")
    return value
