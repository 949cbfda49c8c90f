"""Browser-facing defences for every route: a Host allow-list (DNS rebinding) and cross-site write refusal (CSRF).

A server on 127.0.0.1 is reachable from any page the user's browser opens. Two attacks follow:

- **DNS rebinding**: `evil.example` first resolves to the attacker, then to 127.0.0.1; the page's scripts then
  read our API as *same origin*. Defence: answer only requests whose `Host` names this server — loopback names
  when bound to loopback, the bind address and `--allowed-host` names otherwise — else 421 Misdirected Request.
- **CSRF**: a plain HTML form (or `fetch` with `mode: no-cors`) on any site can POST `multipart/form-data` here
  without a preflight. Defence: a state-changing request (anything but GET/HEAD/OPTIONS) whose `Origin` is not
  this server's own origin or an allowed `--cors-origin`, or whose `Sec-Fetch-Site` says `cross-site`/`same-site`
  without such an Origin, gets 403. API clients (curl, openai, requests) send neither header and pass.

The `Host` header is never trusted for anything else: it only has to match the allow-list.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sfumato.server.errors import refuse
from sfumato.server.settings import is_loopback

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def split_host(value: str) -> tuple[str, int | None]:
    """`host[:port]` or `[v6]:port` -> (lower-case host without brackets, port or None); ("", None) if malformed."""
    value = value.strip().lower()
    if not value:
        return "", None
    try:
        parts = urlsplit("//" + value)
        return (parts.hostname or "").rstrip("."), parts.port
    except ValueError:
        return "", None


def _is_loopback_name(host: str) -> bool:
    """Loopback addresses, `localhost`, and `*.localhost` (which browsers resolve to loopback themselves)."""
    return is_loopback(host) or host.endswith(".localhost")


class HostPolicy:
    """Which Host names and browser origins this server answers to."""

    def __init__(self, bind_host: str, allowed_hosts: tuple[str, ...] = (), cors_origins: tuple[str, ...] = ()):
        self.allowed_hosts = {split_host(h)[0] or h.lower() for h in allowed_hosts}
        bind = split_host(bind_host)[0] or bind_host.lower()
        self.any_host = "*" in self.allowed_hosts
        if bind not in ("0.0.0.0", "::"):
            self.allowed_hosts.add(bind)
        self.cors_origins = {o.rstrip("/").lower() for o in cors_origins}

    def host_allowed(self, host: str) -> bool:
        if not host:
            return False
        return self.any_host or _is_loopback_name(host) or host in self.allowed_hosts

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        """A browser origin may write when it is this server itself (same origin) or an allowed CORS origin."""
        origin = origin.rstrip("/").lower()
        if origin in self.cors_origins or "*" in self.cors_origins:
            return True
        try:
            parts = urlsplit(origin)
            origin_host, origin_port = (parts.hostname or ""), parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not origin_host:
            return False  # "null" (sandboxed frames, file://) and anything odd
        host, port = split_host(host_header)
        default = 443 if parts.scheme == "https" else 80
        return origin_host == host and (origin_port or default) == (port or default) and self.host_allowed(host)


class BrowserGuard:
    """ASGI middleware applying `HostPolicy` to every HTTP request (routes, static files, docs)."""

    def __init__(self, app, policy: HostPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # ComfyUI's /ws: the Host allow-list, and no foreign page's socket
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            host_header = headers.get("host", "")
            origin = headers.get("origin")
            if not self.policy.host_allowed(split_host(host_header)[0]) or \
                    (origin is not None and not self.policy.origin_allowed(origin, host_header)):
                return await send({"type": "websocket.close", "code": 1008})
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # lifespan
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host_header = headers.get("host", "")
        host, _ = split_host(host_header)
        if not self.policy.host_allowed(host):
            return await refuse(send, 421, f"Host {host_header!r} is not served here (DNS rebinding defence); "
                                            "start the server with --allowed-host NAME to allow it")
        method = scope.get("method", "GET").upper()
        if method not in SAFE_METHODS:
            origin = headers.get("origin")
            site = headers.get("sec-fetch-site", "").lower()
            if origin is not None:
                if not self.policy.origin_allowed(origin, host_header):
                    return await refuse(send, 403, f"cross-site request from origin {origin!r} refused "
                                                    "(allow it with --cors-origin)")
            elif site in ("cross-site", "same-site"):
                return await refuse(send, 403, f"cross-site request refused (Sec-Fetch-Site: {site})")
        return await self.app(scope, receive, send)
