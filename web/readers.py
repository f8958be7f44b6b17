"""Reader-study routes: a reader's studies, and a case: two reports side by side, labels hidden, sides
randomised (once, when the study was made), no ground truth; the reader picks the better report or
"equivalent" and marks errors by kind and clinical significance."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from db import readers
from db.review_schema import CHOICES, ERROR_KINDS, ReaderStudyError
from web.auth import check_csrf, require
from web.pages import render

SIDES = (("left", "Report 1"), ("right", "Report 2"))
MARKS = (("", "no"), ("minor", "yes, not significant"), ("significant", "yes, clinically significant"))


def _position(request: Request) -> int:
    try:
        return int(request.path_params["position"])
    except ValueError:
        return 0


def _refused(request: Request, user: Any, exc: ReaderStudyError) -> Response:
    return render(request, "error.html", {"user": user, "title": "Not available", "message": str(exc)}, status=403)


def index(request: Request) -> Response:
    user = require(request)
    studies = readers.progress(request.app.state.db, user.id)
    return render(request, "reader_index.html", {"user": user, "studies": studies,
                                                 "done": request.query_params.get("done", "")})


def case_page(request: Request) -> Response:
    user = require(request)
    try:
        view = readers.case(request.app.state.db, request.path_params["name"], _position(request), user.id)
    except ReaderStudyError as exc:
        return _refused(request, user, exc)
    return render(request, "reader_case.html", {"user": user, "c": view, "sides": SIDES, "kinds": ERROR_KINDS,
                                                "marks": MARKS, "choices": CHOICES, "message": ""})


def _errors(form: FormData) -> dict[tuple[str, str], bool]:
    marked = {}
    for side, _ in SIDES:
        for i, kind in enumerate(ERROR_KINDS):
            value = form.get(f"error-{side}-{i}", "")
            if value in ("minor", "significant"):
                marked[(side, kind)] = value == "significant"
    return marked


async def case_submit(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=100)
    check_csrf(request, form.get("csrf_token"))

    def act() -> Response:
        user = require(request)
        name, position = request.path_params["name"], _position(request)
        try:
            following = readers.answer(request.app.state.db, name, position, user.id, str(form.get("choice", "")),
                                       _errors(form))
        except ReaderStudyError as exc:
            return _refused(request, user, exc)
        if following is None:
            return RedirectResponse(f"/reader?done={name}", status_code=303)
        return RedirectResponse(f"/reader/{name}/{following}", status_code=303)

    return await run_in_threadpool(act)


def results_page(request: Request) -> Response:
    """An admin's view of a study's results: what `xrq study results` prints."""
    from worker.readers import results

    user = require(request, "admin")
    name = request.path_params["name"]
    try:
        found = results(request.app.state.db, name)
    except ReaderStudyError as exc:
        return render(request, "error.html", {"user": user, "title": "Not found", "message": str(exc)}, status=404)
    return render(request, "reader_results.html", {"user": user, "r": found})


def studies_page(request: Request) -> Response:
    user = require(request, "admin")
    return render(request, "reader_studies.html", {"user": user, "names": readers.study_names(request.app.state.db)})


ROUTES: list[Any] = [
    Route("/admin/studies", studies_page, methods=["GET"]),
    Route("/admin/studies/{name}", results_page, methods=["GET"]),
    Route("/reader", index, methods=["GET"]),
    Route("/reader/{name}/{position}", case_page, methods=["GET"]),
    Route("/reader/{name}/{position}", case_submit, methods=["POST"]),
]
