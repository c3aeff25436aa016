"""Same-origin check for requests authenticated by the console cookie (CSRF defence).

A browser attaches the session cookie to a request another site makes it send (``SameSite``
narrows this, it does not close every case), so every cookie-authenticated state-changing
request must come from the server's own pages. Browsers say where a request comes from:
``Sec-Fetch-Site`` (modern browsers), ``Origin`` (every cross-origin POST, and same-origin
ones too) and ``Referer`` (the fallback). Any of them naming another origin is refused with
403. A request carrying none of them is not from a browser page (curl, scripts), which cannot
be made to send the victim's cookie by another site, and is let through. Bearer-token
requests are not checked: a browser never adds that header on its own.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

from fleet_server.errors import CrossOriginError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an absolute http(s) URL; None if it is not one."""
    try:
        parts = urlsplit(url.strip())
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not host or port is None:
        return None
    return scheme, host, port


def own_origin(request: Request, *, behind_tls_proxy: bool) -> tuple[str, str, int] | None:
    """The origin the browser used to reach us: the Host header and the request's scheme."""
    scheme = "https" if behind_tls_proxy else request.url.scheme
    host = request.headers.get("host", "")
    return _origin_of(f"{scheme}://{host}") if host else None


def require_same_origin(request: Request, *, behind_tls_proxy: bool) -> None:
    """Raise ``CrossOriginError`` unless a state-changing request comes from our own pages."""
    if request.method in SAFE_METHODS:
        return
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise CrossOriginError(f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None:
        return
    expected = own_origin(request, behind_tls_proxy=behind_tls_proxy)
    if expected is None or _origin_of(claimed) != expected:
        raise CrossOriginError(
            f"cross-origin request refused: it comes from {claimed!r}, not from this server")
