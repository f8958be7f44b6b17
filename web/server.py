"""Running the application under uvicorn: one process, or several on PostgreSQL (`--workers N`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from common.errors import XrqError
from web.app import SECRET_VAR, WebConfig


class ServeError(XrqError):
    """Raised when the server cannot run as asked (several processes on SQLite)."""


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    forwarded_allow_ips: str | None = None  # the TLS proxy's address: trust its X-Forwarded-* headers


def run(config: WebConfig, listen: Listen) -> None:
    import uvicorn

    from worker import runtime

    if listen.workers > 1 and not config.database_url.startswith("postgres"):
        raise ServeError("several server processes (--workers) need PostgreSQL: set XRQ_DATABASE_URL to a "
                         "postgresql:// URL, or run one process on SQLite")
    runtime.database(config.database_url)  # migrate (or check) once, here, before any process serves
    common = {"host": listen.host, "port": listen.port, "server_header": False, "date_header": True,
              "proxy_headers": listen.forwarded_allow_ips is not None,
              "forwarded_allow_ips": listen.forwarded_allow_ips, "log_level": "info"}
    if listen.workers == 1:
        from web.app import create_app

        uvicorn.run(create_app(config), **common)  # type: ignore[arg-type]
        return
    # Worker processes build their own app from the environment; they share the one secret key.
    os.environ.update({"XRQ_DATABASE_URL": config.database_url, SECRET_VAR: config.secret_key,
                       "XRQ_SERVE_HTTPS": "1" if config.https else "0"})
    uvicorn.run("web.app:app_from_env", factory=True, workers=listen.workers, **common)  # type: ignore[arg-type]
