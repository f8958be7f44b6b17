"""A study's images as PNG, rendered on the server: any format xrq reads, DICOM through its own VOI
window (model.imaging.images applies it), shrunk to the size asked for.

A file is read the way a worker reads it: only inside the folder its job was submitted from, only if
it still holds the content that was submitted (its sha256). Rendered images are kept in a small
per-process cache: a reviewer flips between studies and back.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from starlette.responses import Response

from db.engine import Database
from db.errors import NotFoundError
from db.review import image_file

SIZES = {"512": 512, "1024": 1024, "2048": 2048, "full": 4096}
_CACHE_BYTES = 64 * 2**20
_cache: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
_cache_size = 0
_lock = threading.Lock()


def render_png(path: str, root: str, sha256: str | None, longest: int) -> bytes:
    from model.imaging.images import decode_bytes, read_submitted

    picture = decode_bytes(read_submitted(path, root=root, sha256=sha256), name=path)
    picture.thumbnail((longest, longest))
    out = io.BytesIO()
    picture.save(out, format="PNG", compress_level=1)  # speed over bytes: it travels once, on a LAN
    return out.getvalue()


def image_response(db: Database, image_id: int | None, size: str) -> Response:
    from model.errors import ImageError

    if image_id is None or size not in SIZES:
        raise NotFoundError("no such image")
    path, root, sha256 = image_file(db, image_id)
    key = (db.url, image_id, size)
    data = _cached(key)
    if data is None:
        try:
            data = render_png(path, root, sha256, SIZES[size])
        except ImageError as exc:
            return Response(f"cannot show this image: {exc}", status_code=422, media_type="text/plain")
        _remember(key, data)
    return _png(data)


def _cached(key: tuple[str, int, str]) -> bytes | None:
    """A kept PNG, now the most recently used; or None."""
    with _lock:
        data = _cache.get(key)
        if data is not None:
            _cache.move_to_end(key)
    return data


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"cache-control": "private, max-age=3600"})


def _remember(key: tuple[str, int, str], data: bytes) -> None:
    global _cache_size
    with _lock:
        if key not in _cache:
            _cache[key] = data
            _cache_size += len(data)
        while _cache_size > _CACHE_BYTES and _cache:
            _, old = _cache.popitem(last=False)
            _cache_size -= len(old)


def attention_response(db: Database, database_url: str, report_id: int, method: str = "attention") -> Response:
    """The report's attention picture (worker.evidence.attention_png; `method` as `xrq show
    --attention-method`), drawn on demand and kept like the images: a report's tokens never change. The
    first one a server process draws loads the model that wrote the report (seconds; then it stays
    loaded in that process)."""
    from model.errors import ModelError
    from worker.errors import NoEvidenceError
    from worker.settings import Settings
    from worker.show import attention_png

    key = (db.url, report_id, method)
    data = _cached(key)
    if data is None:
        try:
            data = attention_png(Settings.from_env().replace(database_url=database_url), report_id, method=method)
        except NoEvidenceError as exc:
            return Response(f"no attention to show: {exc}", status_code=404, media_type="text/plain")
        except ModelError as exc:
            return Response(f"the model that wrote this report cannot be loaded here: {exc}", status_code=503,
                            media_type="text/plain")
        _remember(key, data)
    return _png(data)

