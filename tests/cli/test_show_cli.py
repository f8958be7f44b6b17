"""`xrq show`: which study a user means, pictures named by uid, an index with thumbnails, any text drawn."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from db.errors import NotFoundError
from db.queries import study_detail
from tests.conftest import EXAMPLES
from worker import runtime
from worker.show import picture_names

EVIL = "a\x1b]0;pwned\x07b.png"  # a file name that retitles a terminal


def run(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fail(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code != 0 and "Traceback" not in result.output
    return result.output


def folder(root: Path, name: str, files: dict[str, str]) -> Path:
    """A folder of example X-rays under new names: {new name: example file}."""
    out = root / name
    out.mkdir()
    for new, example in files.items():
        shutil.copy(EXAMPLES / example, out / new)
    return out


@pytest.fixture(scope="module")
def env(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Job 1: studies 1000, 54, 7, one named EVIL and a failed one (database ids 1-5). Job 2: uid 3
    (id 6), so that `show 3` is uid 3, not the study whose database id is 3. Job 3: another uid 3."""
    root = tmp_path_factory.mktemp("show")
    env = {"XRQ_DATABASE_URL": f"sqlite:///{root / 'x.db'}", "XRQ_MODEL": str(tiny_model)}
    first = folder(root, "a", {"1000_IM-0003-1001.dcm.png": "1000_IM-0003-1001.dcm.png",
                               "1000_IM-0003-2001.dcm.png": "1000_IM-0003-2001.dcm.png",
                               "CXR54_IM-2145-1001.png": "CXR54_IM-2145-1001.png",
                               "CXR54_IM-2145-1002.png": "CXR54_IM-2145-1002.png",
                               "CXR7_IM-2263-1001.png": "CXR7_IM-2263-1001.png", EVIL: "CXR25_IM-1024-2001.png"})
    (first / "bad\x1b[31m.png").write_text("not an image\n")
    second = folder(root, "b", {"CXR3_IM-1384-1001.png": "CXR3_IM-1384-1001.png",
                                "CXR3_IM-1384-2001.png": "3_IM-1384-2001.dcm.png"})
    third = folder(root, "c", {"CXR3_IM-9999-1001.png": "CXR303_IM-1404-1001.png"})
    for source in (first, second, third):
        run(env, "submit", str(source))
    runtime.clear()
    return env


def uids_by_id(env: dict[str, str]) -> dict[int, str]:
    rows = [json.loads(line) for line in run(env, "reports", "--format", "jsonl").splitlines()]
    return {r["study_id"]: r["uid"] for r in rows}


def test_a_study_is_named_by_uid_and_by_id_only_on_request(env: dict[str, str], tmp_path: Path) -> None:
    ids = uids_by_id(env)
    assert ids[3] != "3" and sorted(u for u in ids.values() if u == "3") == ["3", "3"]
    db = runtime.database(env["XRQ_DATABASE_URL"])
    # Two studies have uid 3: a bare `show 3` is ambiguous and says how to choose, never shows id 3.
    message = fail(env, "show", "3", "-o", str(tmp_path / "s.png"))
    assert message.startswith("Error: uid '3' names 2 studies (ids ")
    assert study_detail(db, "3", job_id=2).uid == "3"
    assert study_detail(db, "3", job_id=3).study_id != study_detail(db, "3", job_id=2).study_id
    assert run(env, "show", "3", "--job", "2", "-o", str(tmp_path / "s.png")) == f"Wrote {tmp_path / 's.png'}\n"
    assert study_detail(db, study_id=3).uid == ids[3]
    assert run(env, "show", "--id", "3", "-o", str(tmp_path / "i.png")) == f"Wrote {tmp_path / 'i.png'}\n"
    assert fail(env, "show", "3", "--id", "3", "-o", str(tmp_path / "x.png")).endswith(
        "Error: give a study's UID or its --id, not both\n")


def test_a_job_that_does_not_exist_draws_nothing(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "s.png"
    assert fail(env, "show", "1000", "--job", "999", "-o", str(out)) == \
        "Error: no job 999; `xrq status` lists the jobs\n"
    assert fail(env, "show", "--job", "999", "-o", str(tmp_path / "pictures")) == \
        "Error: no job 999; `xrq status` lists the jobs\n"
    assert fail(env, "show", "1000", "--job", "2", "-o", str(out)) == \
        "Error: no study with uid '1000' in job 2: give a uid from `xrq reports`\n"
    assert fail(env, "show", "--id", "99", "-o", str(out)) == \
        "Error: no study with id 99: `xrq reports` lists study ids and uids\n"
    assert not out.exists() and not (tmp_path / "pictures").exists()


def test_pictures_are_named_by_uid_with_thumbnails_in_the_index(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "pictures"
    assert run(env, "show", "--job", "1", "-o", str(out)) == f"Wrote {out / 'index.html'}\n"
    assert sorted(p.name for p in out.glob("*.png")) == ["1000.png", "54.png", "7.png", "a_0_pwned_b.png",
                                                          "bad_31m.png"]
    index = (out / "index.html").read_text()
    assert '<a href="1000.png"><img src="thumbs/1000-1.jpg"' in index
    assert '<img src="thumbs/1000-2.jpg"' in index and '<img src="thumbs/54-2.jpg"' in index
    with Image.open(out / "thumbs" / "1000-1.jpg") as thumb:
        assert max(thumb.size) == 128
    # The unreadable view is named, and no control character reaches the page.
    assert "view 1: unreadable" in index and "FAILED: bad\\x1b[31m.png: " in index
    assert "a\\x1b]0;pwned\\x07b.png" in index and "\x1b" not in index and "\x07" not in index


def test_picture_names_are_safe_and_unique() -> None:
    names = picture_names({1: "1000", 2: "bad/scan.png", 3: "bad_scan", 4: "../../etc", 5: "\x1b", 6: "BAD_SCAN"})
    # Taken in uid order: BAD_SCAN first, then the two that clean to the same name (any case).
    assert names == {1: "1000", 2: "bad_scan-id2", 3: "bad_scan-id3", 4: "etc", 5: "study", 6: "BAD_SCAN"}


def test_control_characters_draw_without_missing_glyphs(env: dict[str, str], tmp_path: Path) -> None:
    """A report or file name with control characters (and `$`, which matplotlib reads as math) draws as text."""
    from model.figures.pictures import render_study

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph 27 missing from font(s)"
        run(env, "show", EVIL, "-o", str(tmp_path / "evil.png"))
        render_study(tmp_path / "r.png", title=f"Study {EVIL}", images=["x\x07y.png: unreadable"],
                     report="Heart \x1b[31mnormal\x00. Cost $5 and $6.\u202e", truth="line\nbreak\x0c")
    with Image.open(tmp_path / "r.png") as picture:
        assert picture.size[0] > 500


def test_an_ambiguous_uid_is_an_error_in_the_library_too(env: dict[str, str]) -> None:
    with pytest.raises(NotFoundError, match="say which by its job or its study id"):
        study_detail(runtime.database(env["XRQ_DATABASE_URL"]), "3")


def test_show_without_a_job_says_which_report_it_drew(tiny_model: Path, tmp_path: Path) -> None:
    from model.network.bundle import build
    from model.network.store import save

    other = tmp_path / "other-model"
    save(build("tiny", seed=1), other)
    images = folder(tmp_path, "in", {"CXR25_IM-1024-2001.png": "CXR25_IM-1024-2001.png"})
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    for model in (tiny_model, other):
        run(env, "submit", str(images), "--model", str(model), "--max-new-tokens", "3")
    said = run(env, "show", "25", "-o", str(tmp_path / "s.png"))
    assert said.splitlines()[0] == ("Study 25: the report by model other-model (job 2), the newest of 2 models' "
                                    "reports; `--job N` shows another's")
    assert "Study 25" not in run(env, "show", "25", "--job", "1", "-o", str(tmp_path / "t.png"))
