"""The review routes: sign in and out, the worklist, a report's page and its actions, images, accounts.

Each route is short: `require` (who may), parse, one service call, render. Routes that touch the
database are plain functions (Starlette runs them in its thread pool); those that read a form read it
here and hand the rest to the pool.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from db import accounts, readers, review, worklist
from db.accounts import Account
from db.evidence import report_evidence, report_place
from db.review_schema import STATES, ReviewConflictError, ReviewRefusedError
from model.defaults import ATTENTION_METHODS
from web.auth import check_csrf, end_session, login, require, start_session
from web.images import attention_response, image_response
from web.pages import render
from worker import review as review_service


def _int(value: object, default: int | None = None) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return default
    return number if 0 <= number < 2**31 else default


def _safe_next(target: object) -> str:
    """Only a path of this site after sign-in: never an address elsewhere (an open redirect)."""
    text = str(target or "/")
    return text if text.startswith("/") and not text.startswith("//") and "\\" not in text else "/"


async def _form(request: Request) -> FormData:
    form = await request.form(max_files=0, max_fields=200)
    check_csrf(request, form.get("csrf_token"))
    return form


def login_page(request: Request) -> Response:
    return render(request, "login.html", {"next": _safe_next(request.query_params.get("next")), "message": "",
                                          "name": ""})


async def login_submit(request: Request) -> Response:
    form = await _form(request)
    name, password = str(form.get("user", "")).strip(), str(form.get("password", ""))
    config = request.app.state.config
    result = await run_in_threadpool(login, request.app.state.db, name, password, config.throttle)
    if result.account is None:
        return render(request, "login.html", {"next": _safe_next(form.get("next")), "message": result.message,
                                              "name": name[:64]}, status=401)
    start_session(request, result.account, config.secret_key)
    return RedirectResponse(_safe_next(form.get("next")), status_code=303)


async def logout(request: Request) -> Response:
    await _form(request)
    end_session(request)
    return RedirectResponse("/login", status_code=303)


_models: dict[str, tuple[float, list[str]]] = {}


def _model_names(db: Any) -> list[str]:
    """The models for the filter, read at most once a minute per process (the list rarely changes)."""
    read_at, names = _models.get(db.url, (-60.0, []))
    if time.monotonic() - read_at > 60:
        names = worklist.model_names(db)
        _models[db.url] = (time.monotonic(), names)
    return names


def worklist_page(request: Request) -> Response:
    user = require(request)
    q = request.query_params
    state = q.get("state") if q.get("state") in STATES else None
    f = worklist.WorklistFilter(job_id=_int(q.get("job")), model=q.get("model") or None, state=state,
                                text=(q.get("q") or "").strip()[:200] or None, reader_id=_reader_id(request, user))
    db = request.app.state.db
    page = worklist.worklist(db, f, after=worklist.Cursor.decode(q.get("after")),
                             limit=request.app.state.config.page_size)
    params = {k: v for k, v in (("job", f.job_id), ("model", f.model), ("state", f.state), ("q", f.text)) if v}
    more = urlencode({**params, "after": page.next.encode()}) if page.next else None
    return render(request, "worklist.html", {
        "user": user, "page": page, "filter": f, "models": _model_names(db), "states": STATES,
        "next_query": more, "first_query": urlencode(params), "paged": bool(q.get("after")),
        "none_left": q.get("done") == "none"})


def report_page(request: Request) -> Response:
    user = require(request)
    report_id = _int(request.path_params["report_id"])
    if report_id is None:
        return render(request, "error.html", {"user": user, "title": "Not found", "message": "No such report."},
                      status=404)
    data = review.report_review(request.app.state.db, report_id)
    hidden = _hidden_from_reader(request, user, data.study_id)
    if hidden is not None:
        return hidden
    return render(request, "report.html", {"user": user, "r": data, "done": request.query_params.get("done", ""),
                                           "refused": "", "explain": report_evidence(request.app.state.db, report_id)})


def _hidden_from_reader(request: Request, user: Account, study_id: int) -> Response | None:
    """The page that refuses a study's drafts to one of its readers in a reader study, or None.

    Its drafts name their models and its ground truth is the answer: seen here, they would unblind the
    reader study. The study stays out of their worklist and their "Next" too (`db.worklist.read_by`).
    """
    if not readers.blinded(request.app.state.db, study_id, user.id):
        return None
    return render(request, "error.html", {
        "user": user, "title": "Hidden from you during a reader study",
        "message": "You read this study in a reader study: its drafts and its ground truth are hidden from "
                   "you while you are one of its readers. Read it under Reader studies."}, status=403)


def _reader_id(request: Request, user: Account) -> int | None:
    """The user's id when they read in any reader study (their worklist leaves those studies out)."""
    return user.id if worklist.reads_any(request.app.state.db, user.id) else None


async def report_submit(request: Request) -> Response:
    form = await _form(request)
    return await run_in_threadpool(_report_submit, request, form)


def _report_submit(request: Request, form: FormData) -> Response:
    user = require(request)
    db = request.app.state.db
    report_id = _int(request.path_params["report_id"])
    base = _int(form.get("version"))
    if report_id is None or base is None:
        return render(request, "error.html", {"user": user, "title": "Bad request",
                                              "message": "The form lacks its report or version."}, status=400)
    action = str(form.get("action", ""))
    text = str(form.get("text", ""))
    hidden = _hidden_from_reader(request, user, report_place(db, report_id)[0])
    if hidden is not None:
        return hidden
    try:
        done = review_service.submit(db, report_id, base_version=base, action=action, text=text, author_id=user.id,
                                     reason=str(form.get("reason", "")) or None)
    except ReviewConflictError:
        return render(request, "conflict.html", {"user": user, "r": review.report_review(db, report_id),
                                                 "mine": text, "action": action}, status=409)
    except ReviewRefusedError as exc:
        data = review.report_review(db, report_id)
        return render(request, "report.html", {"user": user, "r": data, "done": "", "refused": str(exc),
                                               "typed": text, "explain": report_evidence(db, report_id)},
                      status=422)
    return RedirectResponse(f"/reports/{report_id}?done={done.action}", status_code=303)


def next_report(request: Request) -> Response:
    user = require(request)
    found = worklist.next_unreviewed(request.app.state.db, _int(request.path_params.get("report_id")),
                                     reader_id=_reader_id(request, user))
    if found is None:
        return RedirectResponse("/?state=draft&done=none", status_code=303)
    return RedirectResponse(f"/reports/{found}", status_code=303)


def attention(request: Request) -> Response:
    """Where the model looked for each sentence of a report (drawn on demand: the report page loads it lazily);
    `?method=relevance` or `occlusion` for the other maps of `xrq show --attention-method`."""
    user = require(request)
    report_id = _int(request.path_params["report_id"])
    if report_id is None:
        return Response("no such report", status_code=404, media_type="text/plain")
    method = request.query_params.get("method", ATTENTION_METHODS[0])
    if method not in ATTENTION_METHODS:
        return Response(f"method: one of {', '.join(ATTENTION_METHODS)}", status_code=400, media_type="text/plain")
    db = request.app.state.db
    hidden = _hidden_from_reader(request, user, report_place(db, report_id)[0])
    if hidden is not None:
        return hidden
    return attention_response(db, request.app.state.config.database_url, report_id, method)


def image(request: Request) -> Response:
    require(request)
    image_id = _int(request.path_params["image_id"])
    size = request.query_params.get("size", "1024")
    return image_response(request.app.state.db, image_id, size)


def users_page(request: Request) -> Response:
    user = require(request, "admin")
    return render(request, "users.html", {"user": user, "accounts": accounts.accounts(request.app.state.db)})


async def users_submit(request: Request) -> Response:
    form = await _form(request)

    def act() -> Response:
        admin = require(request, "admin")
        name, action = str(form.get("name", "")), str(form.get("action", ""))
        if action in ("disable", "enable") and name != admin.name:
            accounts.set_disabled(request.app.state.db, name, action == "disable")
        return RedirectResponse("/admin/users", status_code=303)

    return await run_in_threadpool(act)


ROUTES: list[Any] = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login_submit, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/", worklist_page, methods=["GET"]),
    Route("/reports/{report_id}", report_page, methods=["GET"]),
    Route("/reports/{report_id}", report_submit, methods=["POST"]),
    Route("/reports/{report_id}/next", next_report, methods=["GET"]),
    Route("/next", next_report, methods=["GET"]),
    Route("/images/{image_id}.png", image, methods=["GET"]),
    Route("/reports/{report_id}/attention.png", attention, methods=["GET"]),
    Route("/admin/users", users_page, methods=["GET"]),
    Route("/admin/users", users_submit, methods=["POST"]),
]
