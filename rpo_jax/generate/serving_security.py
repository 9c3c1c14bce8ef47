"""Who may talk to `rpo-jax serve`, checked before any route (each refusal a JSON error), and the access log.

- Host: the Host header must name an allowed host. By default these are the loopback names when the server listens
  on a loopback address, so a web page whose DNS name is rebound to 127.0.0.1 is refused (DNS rebinding); any host
  when it listens beyond (then the API key is the guard). `--allowed-hosts` replaces the default. 403.
- Origin: browsers send it with cross-site requests (and non-browser clients do not): a request whose Origin names a
  host not listed by name among the allowed hosts is refused, so no web page a user opens can make this server
  generate ("*" admits any Host header, not any Origin). 403.
- API key: with one set (`--api-key` or RPO_JAX_API_KEY), every request, /health included, must carry
  `Authorization: Bearer <key>` (compared in constant time). 401.
- Access log: one line per request on the `rpo_jax.serve` logger: client, method, path, status, milliseconds to
  the end of the answer (a stream's included) and, for chat completions, prompt+completion tokens.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from rpo_jax.generate.serving_protocol import error_body

log = logging.getLogger("rpo_jax.serve")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
API_KEY_VARIABLE = "RPO_JAX_API_KEY"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(listen_host: str) -> tuple[str, ...]:
    return LOOPBACK_NAMES if is_loopback(listen_host) else ("*",)


def host_name(value: str) -> str:
    """The host of a Host header or an address: "[::1]:8000" -> "::1", "LocalHost:80" -> "localhost"."""
    value = value.strip().lower().rstrip(".")
    if value.startswith("["):
        return value[1 : value.find("]")]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """ASGI middleware: the Host, Origin and API key checks of the module doc."""

    def __init__(self, app, allowed_hosts: tuple[str, ...], api_key: str | None):
        self.app, self.api_key = app, api_key
        self.named = {host_name(h) for h in allowed_hosts if h != "*"}
        self.any_host = "*" in allowed_hosts

    def refusal(self, headers: Headers) -> JSONResponse | None:
        host = host_name(headers.get("host", ""))
        if not self.any_host and host not in self.named:
            allowed = ", ".join(sorted(self.named))
            message = f"Host {host!r} is not served here (allowed: {allowed}; see --allowed-hosts)"
            return JSONResponse(error_body(403, message), 403)
        origin = headers.get("origin")
        if origin is not None and (urlsplit(origin).hostname or "") not in self.named:
            message = f"cross-site requests are refused (Origin {origin!r}; see --allowed-hosts)"
            return JSONResponse(error_body(403, message), 403)
        if self.api_key is not None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            given = token.strip().encode("latin-1")  # header bytes as sent (Starlette decodes them as latin-1)
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.api_key.encode("utf-8")):
                body = error_body(401, "a valid API key is required: send 'Authorization: Bearer <key>'")
                return JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})
        return None

    async def __call__(self, scope, receive, send) -> None:
        refusal = self.refusal(Headers(scope=scope)) if scope["type"] == "http" else None
        await (refusal or self.app)(scope, receive, send)


class AccessLog:
    """ASGI middleware: the access log line of the module doc."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), []

        async def send_noting_status(message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            client = ":".join(map(str, scope["client"])) if scope.get("client") else "-"
            usage = scope.get("state", {}).get("usage")
            log.info(
                '%s "%s %s" %s %.0f ms%s',
                client,
                scope["method"],
                scope["path"],
                status[0] if status else "-",
                (time.perf_counter() - started) * 1000,
                f" tokens {usage[0]}+{usage[1]}" if usage else "",
            )
