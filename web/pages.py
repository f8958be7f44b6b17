"""Rendering pages: the Jinja2 environment (autoescaping always on, undefined names an error) and
`render`, which every route answers with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from web.auth import csrf_token

HERE = Path(__file__).parent


def templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.globals["csrf_token"] = csrf_token
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M UTC") if d is not None else ""
    return Jinja2Templates(env=env)


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    tpl: Jinja2Templates = request.app.state.templates
    user = context.pop("user", None)
    return tpl.TemplateResponse(request, name, {"user": user, **context}, status_code=status)


