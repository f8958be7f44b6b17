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


# What a user gets with no variable and no option: written out here, not read from the table they come from.
WORK_DEFAULTS = {
    "database_url": "sqlite:///xrq.db", "broker_url": None, "model": None, "batch_size": None, "device": "auto",
    "num_beams": 1, "max_new_tokens": None, "max_pixels": 50_000_000, "max_file_bytes": 512 * 1024 * 1024,
    "decode_workers": None, "cache_dir": None, "cache_max_bytes": 10_000_000_000, "compile": False,
    "backlog_cron": "0 2 * * *", "stuck_after": 2 * 3600, "max_attempts": 3, "inbox": None, "auto_migrate": True,
    "log_level": None, "log_format": "text",
    "listen_aet": "XRQ", "listen_port": 11112, "listen_bind": "127.0.0.1", "listen_allow": None, "allow_any": False,
    "listen_inbox": "xrq-inbox", "study_timeout": 30, "max_associations": 10, "min_free_bytes": 1_000_000_000,
    "push_to": None, "secret_key": None, "serve_https": False,
}
BROKER_DEFAULTS = {"visibility_timeout": 3600, "task_max_retries": 10, "retry_backoff_max": 120, "broker_prefix": ""}


def test_defaults_are_what_users_are_told() -> None:
    from dataclasses import asdict

    from worker.settings import SETTINGS

    assert asdict(Settings.from_env({})) == asdict(Settings()) == WORK_DEFAULTS
    assert asdict(BrokerOptions.from_env({})) == BROKER_DEFAULTS
    assert {s.name for s in SETTINGS} == WORK_DEFAULTS.keys() | BROKER_DEFAULTS.keys()  # every row, once
    assert {s.name for s in SETTINGS if s.broker} == BROKER_DEFAULTS.keys()


def test_every_setting_is_checked_where_it_comes_in() -> None:
    assert Settings.from_env({"XRQ_AUTO_MIGRATE": "0", "XRQ_LOG_LEVEL": "DEBUG", "XRQ_LOG_FORMAT": "json"}) \
        == Settings(auto_migrate=False, log_level="debug", log_format="json")
    with pytest.raises(SettingsError, match="XRQ_LOG_FORMAT must be one of text, json, not 'xml'"):
        Settings.from_env({"XRQ_LOG_FORMAT": "xml"})
    with pytest.raises(SettingsError, match="XRQ_BATCH_SIZE must be at most 65536, not 99999999999"):
        Settings.from_env({"XRQ_BATCH_SIZE": "99999999999"})
    with pytest.raises(SettingsError, match="XRQ_MAX_PIXELS must be at least 1, not 0"):
        Settings(max_pixels=0).checked()
    with pytest.raises(SettingsError, match="XRQ_TASK_MAX_RETRIES must be at least 0, not -1"):
        BrokerOptions.from_env({"XRQ_TASK_MAX_RETRIES": "-1"})
    assert BrokerOptions.from_env({"XRQ_BROKER_PREFIX": "a:"}, broker_prefix="b:").broker_prefix == "b:"


def test_a_beam_width_the_model_refuses_is_refused_where_it_comes_in() -> None:
    from model.defaults import MAX_BEAMS

    with pytest.raises(SettingsError, match=f"XRQ_NUM_BEAMS must be at most {MAX_BEAMS}, not {MAX_BEAMS + 1}"):
        Settings.from_env({"XRQ_NUM_BEAMS": str(MAX_BEAMS + 1)})
    assert Settings.from_env({"XRQ_NUM_BEAMS": str(MAX_BEAMS)}).num_beams == MAX_BEAMS
