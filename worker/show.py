"""`xrq show`: pictures of studies (images beside the report, truth and scores), and an HTML index.

Nothing is created but what was asked for: one PNG, or one folder (inside a folder that exists)
holding a picture per study named by its uid, the views' thumbnails and `index.html`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from db.queries import StudyDetail, export_count, study_detail
from model.errors import ImageError
from model.printable import printable
from worker import runtime
from worker.settings import Settings

if TYPE_CHECKING:
    from PIL.Image import Image

    from worker.evidence import AttentionShown

    Views = list[Image | str]  # decoded views, or why a view could not be read

THUMBNAIL = 128  # pixels, the longer side of a view's thumbnail in index.html
THUMBS = "thumbs"


def show_study(settings: Settings, out: str | Path, *, uid: str | None = None, study_id: int | None = None,
               job_id: int | None = None, on_pick: Callable[[str], None] | None = None) -> Path:
    """Draw one study, named by uid or database id (and optionally its job), to `out` (PNG).

    Without a job, when several models reported the study, `on_pick(line)` hears which report was
    chosen (the newest) and how to choose another.
    """
    detail = study_detail(runtime.database(settings.database_url), uid, study_id=study_id, job_id=job_id)
    if job_id is None and on_pick is not None and detail.models > 1:  # one model's report: nothing to choose
        on_pick(picked_text(detail))
    return _render(detail, study_views(detail, settings.max_pixels), Path(out))


def show_study_attention(settings: Settings, out: str | Path, *, uid: str | None = None,
                         study_id: int | None = None, job_id: int | None = None,
                         threshold: float | None = None, method: str | None = None) -> tuple[Path, AttentionShown]:
    """`show_study`, and beside it `NAME-attention.png`: where the model looked (`worker.evidence`)."""
    from worker.evidence import DEFAULT_METHOD, DEFAULT_THRESHOLD, attention_path, draw_attention

    detail = study_detail(runtime.database(settings.database_url), uid, study_id=study_id, job_id=job_id)
    views = study_views(detail, settings.max_pixels)
    shown = draw_attention(settings, detail, views, attention_path(Path(out)),
                           DEFAULT_THRESHOLD if threshold is None else threshold, method or DEFAULT_METHOD)
    return _render(detail, views, Path(out)), shown


def attention_png(settings: Settings, report_id: int, threshold: float | None = None,
                  method: str | None = None) -> bytes:
    """The attention picture of one stored report as PNG bytes: what the review application shows.

    The study's views as the report's job found them, its model loaded once per process (as a worker
    loads it). Raises NoEvidenceError (no tokens stored, a view unreadable) or the model's errors.
    """
    import tempfile

    from db.evidence import report_place
    from worker.evidence import DEFAULT_METHOD, DEFAULT_THRESHOLD, draw_attention

    db = runtime.database(settings.database_url)
    study_id, job_id = report_place(db, report_id)
    detail = study_detail(db, study_id=study_id, job_id=job_id)
    with tempfile.TemporaryDirectory(prefix="xrq-attention-") as tmp:
        out = Path(tmp) / "attention.png"
        draw_attention(settings, detail, study_views(detail, settings.max_pixels), out,
                       DEFAULT_THRESHOLD if threshold is None else threshold, method or DEFAULT_METHOD)
        return out.read_bytes()


def show_job(settings: Settings, job_id: int, out_dir: str | Path, *,
             on_start: Callable[[int], None] | None = None, progress: Callable[[int], None] | None = None,
             attention: bool = False, threshold: float | None = None, method: str | None = None) -> Path:
    """One picture per study of the job in `out_dir` (made if absent; its parent must exist), each
    named by the study's uid, thumbnails of the views, and `index.html` listing them; returns the index.

    `on_start(n)` is called with the number of studies, `progress(1)` after each picture. With
    `attention`, each reported study also gets `NAME-attention.png` (`worker.evidence`).
    """
    from db.listing import job_studies

    db = runtime.database(settings.database_url)
    total = export_count(db, [job_id])  # the job must exist before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(exist_ok=True)
    (out_dir / THUMBS).mkdir(exist_ok=True)
    if on_start is not None:
        on_start(total)
    index = out_dir / "index.html"
    taken: set[str] = set()  # the file names given so far (a name a study: the one thing that grows)
    with index.open("w", encoding="utf-8") as page:
        page.write(_index_head(job_id, total))
        for study_id, uid in job_studies(db, job_id):  # streamed in uid order: one study in memory at a time
            detail = study_detail(db, study_id=study_id, job_id=job_id)
            stem = _picture_name(study_id, uid, taken)
            views = study_views(detail, settings.max_pixels)
            picture = _render(detail, views, out_dir / f"{stem}.png")
            if attention and detail.report_id is not None:
                from worker.evidence import DEFAULT_METHOD, DEFAULT_THRESHOLD, attention_path, draw_attention

                draw_attention(settings, detail, views, attention_path(picture),
                               DEFAULT_THRESHOLD if threshold is None else threshold, method or DEFAULT_METHOD)
            page.write(_index_row(detail, picture.name, _thumbnails(views, out_dir / THUMBS, stem)) + "\n")
            if progress is not None:
                progress(1)
        page.write(INDEX_FOOT)
    return index


def picked_text(detail: StudyDetail) -> str:
    """Which report `show` drew for a study asked for without --job, and how to choose another."""
    return (f"Study {detail.uid}: the report by model {detail.model} (job {detail.report_job}), the newest of "
            f"{detail.models} models' reports; `--job N` shows another's")


def picture_names(uids: dict[int, str]) -> dict[int, str]:
    """study id -> a file name stem from its uid: letters, digits, `._-` only, unique in one folder.

    A uid can be a path (`bad/scan.png`) or hold anything a file name can; two uids that clean to
    the same stem (or differ only in case) get the study id appended to all but the first. An
    image's extension is dropped (`bad/scan.png` -> `bad_scan`), the picture adds its own.
    """
    names: dict[int, str] = {}
    taken: set[str] = set()
    for study_id, uid in sorted(uids.items(), key=lambda item: (item[1], item[0])):
        names[study_id] = _picture_name(study_id, uid, taken)
    return names


def _picture_name(study_id: int, uid: str, taken: set[str]) -> str:
    """The next study's stem (studies come in (uid, id) order); `taken` holds the stems given so far."""
    bare = re.sub(r"\.(png|jpe?g|dcm|dicom)$", "", uid, flags=re.IGNORECASE)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", bare).strip("._-")[:80] or "study"
    if stem.lower() in taken:
        stem = f"{stem}-id{study_id}"
    taken.add(stem.lower())
    return stem


def study_views(detail: StudyDetail, max_pixels: int) -> Views:
    """The study's views as its job found them (decoded), or why one cannot be read now (a string)."""
    # Imported here: Pillow, NumPy and pydicom are for drawing, not for importing this module.
    from model.imaging.files import text_to_name
    from model.imaging.images import decode_bytes, read_submitted

    views: Views = []
    for path, relpath, sha256 in detail.images:
        try:  # the same rules as a worker: inside the submitted folder, the submitted content
            data = read_submitted(text_to_name(path), root=text_to_name(detail.root), sha256=sha256)
            views.append(decode_bytes(data, max_pixels=max_pixels, name=relpath))
        except ImageError as exc:
            views.append(f"{relpath}: {exc}")
    return views


def _render(detail: StudyDetail, views: Views, out: Path) -> Path:
    from model.figures.pictures import render_study  # matplotlib: only when drawing

    truth = " ".join(t for t in (detail.truth_findings, detail.truth_impression) if t) or None
    title = f"Study {detail.uid} (id {detail.study_id})" + (f" — model {detail.model}" if detail.model else "")
    note = f"FAILED: {detail.error}" if detail.error and detail.report is None else None
    return render_study(out, title=title, images=views, report=detail.report, truth=truth,
                        scores=detail.scores, note=note)


def _thumbnails(views: Views, folder: Path, stem: str) -> list[str | None]:
    """A small JPEG per decoded view (None for a view that could not be read); paths relative to the index."""
    names: list[str | None] = []
    for k, view in enumerate(views, 1):
        if isinstance(view, str):
            names.append(None)
            continue
        thumb = view.convert("L")
        thumb.thumbnail((THUMBNAIL, THUMBNAIL))
        name = f"{stem}-{k}.jpg"
        thumb.save(folder / name, quality=85)
        names.append(f"{THUMBS}/{name}")
    return names


def _text(value: str) -> str:
    return html.escape(printable(value))


def _index_row(detail: StudyDetail, picture: str, thumbs: list[str | None]) -> str:
    report = detail.report if detail.report is not None else f"FAILED: {detail.error or 'unknown'}"
    rouge = detail.scores.get("rouge_l") if detail.scores else None
    href = quote(picture)
    views = "".join(f'<a href="{href}"><img src="{quote(t)}" alt="view {k}" loading="lazy"></a>' if t else
                    f'<span class="bad" title="{_text(detail.images[k - 1][1])}">view {k}: unreadable</span>'
                    for k, t in enumerate(thumbs, 1)) or "no images"
    return (f'<tr><td><a href="{href}">{_text(detail.uid)}</a></td><td class="views">{views}</td>'
            f"<td>{_text(report)}</td><td>{'' if rouge is None else f'{rouge:.3f}'}</td></tr>")


def _index_head(job_id: int, total: int) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>xrq job {job_id}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd;
vertical-align:top;text-align:left}}td:nth-child(3){{max-width:50em}}.views{{white-space:nowrap}}
.views img{{height:{THUMBNAIL}px;margin-right:4px;background:#000}}
.bad{{display:inline-block;width:{THUMBNAIL}px;color:#a00;font-size:small}}</style></head>
<body><h1>xrq job {job_id}: {total} studies</h1>
<p>Draft reports generated by a model; not diagnoses. Click a study or a view to see its picture.</p>
<table><tr><th>study</th><th>views</th><th>report</th><th>ROUGE-L</th></tr>
"""


INDEX_FOOT = "</table></body></html>\n"
