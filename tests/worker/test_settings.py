"""Settings: XRQ_* variables, typed, checked, with options on top."""

from __future__ import annotations

import pytest

from worker.errors import SettingsError
from worker.settings import BrokerOptions, Settings


def test_variables_are_read_and_typed() -> None:
    env = {"XRQ_DATABASE_URL": "postgresql://x@h/db", "XRQ_BATCH_SIZE": "16", "XRQ_MAX_NEW_TOKENS": "128",
           "XRQ_INBOX": "/data/inbox", "XRQ_BACKLOG_CRON": "30 3 * * 1-5", "XRQ_MODEL": ""}
    s = Settings.from_env(env)
    assert (s.database_url, s.batch_size, s.max_new_tokens, s.inbox) == ("postgresql://x@h/db", 16, 128,
                                                                        "/data/inbox")
    assert s.model is None and s.max_pixels == 50_000_000 and s.backlog_cron == "30 3 * * 1-5"


def test_batch_size_and_decode_workers_default_to_auto() -> None:
    assert (Settings.from_env({}).batch_size, Settings.from_env({}).decode_workers) == (None, None)
    s = Settings.from_env({"XRQ_BATCH_SIZE": "auto", "XRQ_DECODE_THREADS": "3", "XRQ_COMPILE": "true",
                           "XRQ_CACHE_DIR": "/var/cache/xrq"})
    assert (s.batch_size, s.decode_workers, s.compile, s.cache_dir) == (None, 3, True, "/var/cache/xrq")


def test_options_win_over_variables_unless_unset() -> None:
    s = Settings.from_env({"XRQ_BATCH_SIZE": "16"}, batch_size=4, model=None)
    assert s.batch_size == 4 and s.model is None


@pytest.mark.parametrize(("env", "message"), [
    ({"XRQ_BATCH_SIZE": "eight"}, "XRQ_BATCH_SIZE must be a whole number or auto, not 'eight'"),
    ({"XRQ_COMPILE": "maybe"}, "XRQ_COMPILE must be 1 or 0"),
    ({"XRQ_NUM_BEAMS": "0"}, "XRQ_NUM_BEAMS must be at least 1, not 0"),
    ({"XRQ_BACKLOG_CRON": "nightly"}, "XRQ_BACKLOG_CRON must have five fields"),
])
def test_bad_values_are_named_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_broker_options() -> None:
    assert BrokerOptions.from_env({"XRQ_VISIBILITY_TIMEOUT": "60"}).visibility_timeout == 60
    with pytest.raises(SettingsError):
        BrokerOptions.from_env({"XRQ_VISIBILITY_TIMEOUT": "0"})
