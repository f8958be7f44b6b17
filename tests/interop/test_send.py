"""Destinations and the CLI's errors for `xrq push` and `xrq listen`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from interop.errors import DestinationError, ListenerError
from interop.scp import Peer, parse_allow
from interop.send import parse_destination


def test_destinations_parse_and_bad_ones_say_what_is_expected() -> None:
    dicom = parse_destination("dicom://ORTHANC@pacs.example.org:4242")
    assert (dicom.kind, dicom.aet, dicom.host, dicom.port) == ("dicom", "ORTHANC", "pacs.example.org", 4242)
    web = parse_destination("https://pacs.example.org/dicom-web/")
    assert (web.kind, web.url) == ("dicomweb", "https://pacs.example.org/dicom-web")
    with pytest.raises(DestinationError, match=r"dicom://AET@HOST:PORT"):
        parse_destination("pacs:4242")
    with pytest.raises(DestinationError, match="XRQ_PUSH_TOKEN"):
        parse_destination("https://user:secret@pacs/dicom-web")
    with pytest.raises(DestinationError, match="1 to 65535"):
        parse_destination("dicom://A@h:70000")


def test_allow_entries() -> None:
    assert parse_allow(["PACS@10.0.0.5 MOD", "CT1@10.0.0.6,"]) == (
        Peer("PACS", "10.0.0.5"), Peer("MOD", None), Peer("CT1", "10.0.0.6"))
    assert Peer("MOD", None).admits("MOD", "1.2.3.4") and not Peer("PACS", "10.0.0.5").admits("PACS", "10.0.0.6")
    with pytest.raises(ListenerError, match="AET@HOST"):
        parse_allow(["@10.0.0.5"])


def test_push_with_a_bad_destination_is_an_error(sqlite_url: str) -> None:
    result = CliRunner().invoke(cli, ["push", "1", "--to", "pacs:4242"], env={"XRQ_DATABASE_URL": sqlite_url})
    assert result.exit_code == 1
    assert "Error: 'pacs:4242' is not a destination: give dicom://AET@HOST:PORT (C-STORE)" in result.output


def test_listen_without_an_allow_list_is_an_error(sqlite_url: str, tiny_model: Path, tmp_path: Path) -> None:
    env = {"XRQ_DATABASE_URL": sqlite_url, "XRQ_MODEL": str(tiny_model), "XRQ_LISTEN_INBOX": str(tmp_path / "in")}
    result = CliRunner().invoke(cli, ["listen", "--port", "1"], env=env)
    assert result.exit_code == 1
    assert "Error: no peer may send: give the PACS or modality that sends with --allow AET@HOST" in result.output
