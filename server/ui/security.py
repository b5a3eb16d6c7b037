"""What keeps the web inbox's pages safe to open: headers, CSRF tokens, PKCE, redirects.

Pure functions, no I/O.  The session cookie holds a broker token of kind
``web``; the CSRF token of a session is the HMAC-SHA256 of a fixed label under
that token, so it needs no storage of its own, differs per session and cannot
be computed without the cookie, which a cross-site page cannot read.  Before
login (the dev mode's login buttons) a random value in a cookie of its own is
compared with the form's copy of it (double submit).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

SESSION_COOKIE = "__Host-dbaccess-ui"
LOGIN_COOKIE = "__Host-dbaccess-login"
PRELOGIN_CSRF_COOKIE = "__Host-dbaccess-csrf"
CSRF_FIELD = "csrf"
_CSRF_LABEL = b"dbaccess-ui-csrf-v1"

# No inline script or style anywhere: everything comes from /ui/static/.
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Pages show statements, reasons and who decided: never kept by a browser or proxy.
    "Cache-Control": "no-store",
}


def csrf_token(session_secret: str) -> str:
    return hmac.new(session_secret.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def same_secret(expected: str | None, given: str | None) -> bool:
    """Constant-time equality of two non-empty strings."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def safe_next(path: str | None) -> str:
    """Where to go after login: a path under /ui/ of this broker, never elsewhere."""
    if not path:
        return "/ui/"
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/") or "\\" in path:
        return "/ui/"
    return path
