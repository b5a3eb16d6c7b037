"""Who is calling: people with OIDC ID tokens, CI jobs with workload tokens, broker tokens.

People log in at their identity provider with the CLI, which hands the ID token
to the broker; CI jobs and agents hand over the JWT their platform gives them.
The broker verifies either kind (:mod:`server.identity.oidc`), derives an
identity and groups from it (the ``oidc`` server settings for people, the
policy's ``workload_identities`` for jobs, :mod:`server.identity.workload`), and
issues its own short-lived API token, which every later call presents.

Issuer URLs are checked here, in one place, for the server settings and the
policy alike: ``https``, or ``http`` on a loopback host (a provider on the same
machine, as in tests and development), never anything that could be read or
altered on the way.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from server.addresses import is_loopback


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
