"""The application: configuration, middleware, templates, error pages, and the routes put together."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db.engine import Database
from db.errors import NotFoundError
from web.auth import Forbidden, LoginRequired, Throttle
from web.pages import render, templates
from worker.settings import Settings

HERE = Path(__file__).parent
SECRET_VAR = "XRQ_SECRET_KEY"
SESSION_HOURS = 12

# Nothing from elsewhere: no inline script or style, no frames. A report's text could never run anyway
# (autoescaping), and this stops whatever might slip past it.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                                 b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


@dataclass(frozen=True)
class WebConfig:
    database_url: str
    secret_key: str = field(repr=False)
    https: bool = False  # cookies marked Secure: set when a TLS proxy is in front
    throttle: Throttle = field(default_factory=Throttle)
    page_size: int = 50


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response, and `Cache-Control: no-store` to pages (not images)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


async def _login_required(request: Request, exc: Exception) -> Response:
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


async def _forbidden(request: Request, exc: Exception) -> Response:
    message = exc.message if isinstance(exc, Forbidden) else "Forbidden."
    return render(request, "error.html", {"title": "Not allowed", "message": message}, status=403)


async def _not_found(request: Request, exc: Exception) -> Response:
    message = str(exc) if isinstance(exc, NotFoundError) else "There is no such page."
    return render(request, "error.html", {"title": "Not found", "message": message}, status=404)


def create_app(config: WebConfig, db: Database | None = None) -> Starlette:
    from web import readers, routes
    from worker import runtime

    app = Starlette(
        routes=[*routes.ROUTES, *readers.ROUTES,
                Mount("/static", StaticFiles(directory=HERE / "static"), name="static")],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(SessionMiddleware, secret_key=config.secret_key, session_cookie="xrq_session",
                       max_age=SESSION_HOURS * 3600, same_site="lax", https_only=config.https),
        ],
        exception_handlers={LoginRequired: _login_required, Forbidden: _forbidden, NotFoundError: _not_found,
                            404: _not_found},
    )
    app.state.config = config
    app.state.db = db or runtime.database(config.database_url)
    app.state.templates = templates()
    return app


def secret_key(settings: Settings | None = None) -> str:
    """XRQ_SECRET_KEY, or a new random key (sessions then end when the server restarts)."""
    return (settings or Settings.from_env()).secret_key or secrets.token_urlsafe(48)


def app_from_env() -> Starlette:
    """The factory uvicorn's worker processes call (`xrq serve --workers N`): `xrq serve` puts the
    settings, and the one secret key all processes share, in their environment."""
    settings = Settings.from_env()
    if not settings.secret_key:
        raise KeyError(SECRET_VAR)  # `xrq serve` always sets it for its processes
    return create_app(WebConfig(database_url=settings.database_url, secret_key=settings.secret_key,
                                https=settings.serve_https))
