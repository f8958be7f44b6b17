"""Fixtures shared by every test: real databases, real X-rays, a tiny real model.

Services (PostgreSQL, Redis) are skipped when absent on a developer's machine, and FAIL when
CI=true: a green CI run must mean the service was tested.
"""

from __future__ import annotations

import os

# Before anything imports torch: one thread per process, never the network.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
for _name in [k for k in os.environ if k.startswith("XRQ_")]:
    del os.environ[_name]  # a developer's own settings must not leak into tests

import shutil  # noqa: E402 (the environment above must be set first)
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "iu"
DATA = REPO / "tests" / "data"
IU_CSV = REPO / "data" / "iu"  # the IU reports, projections and benchmark split
SHARED_DATA = REPO.parent / "shared" / "data"
POSTGRES_ADMIN_URL = os.environ.get("XRQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI") == "true"
REDIS_URL = os.environ.get("XRQ_TEST_REDIS", "redis://127.0.0.1:6379/0")


def service_missing(what: str, error: Exception) -> None:
    """Skip locally, fail in CI."""
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'xrq.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = f"xrq_test_{uuid.uuid4().hex[:12]}"
    admin = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        service_missing("PostgreSQL", exc)
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    from worker import runtime

    runtime.clear()  # close pooled connections before dropping
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on both databases."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture(autouse=True)
def _fresh_runtime() -> Iterator[None]:
    """Each test starts from a clean process: no cached models or databases, and automatic migration on
    (a CLI test run with XRQ_AUTO_MIGRATE=0 sets it off for the process, as the real CLI does)."""
    from db.engine import set_auto_migrate
    from worker import runtime

    yield
    runtime.clear()
    set_auto_migrate(True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight model directory, made once per test session."""
    from model.network.bundle import build
    from model.network.store import save
    out = tmp_path_factory.mktemp("models") / "tiny"
    save(build("tiny", seed=0), out)
    return out


@pytest.fixture
def iu_folder(tmp_path: Path) -> Path:
    """A writable copy of a few real IU studies: 1000 (3 views), 54 and 7 (2 views), 25 (1 view)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ["1000_IM-0003-1001.dcm.png", "1000_IM-0003-2001.dcm.png", "1000_IM-0003-3001.dcm.png",
                 "CXR54_IM-2145-1001.png", "CXR54_IM-2145-1002.png", "CXR7_IM-2263-1001.png",
                 "CXR7_IM-2263-2001.png", "CXR25_IM-1024-2001.png"]:
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


@pytest.fixture
def broker_env(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Environment for workers and submitter: the shared Redis under a key prefix of this test's own
    (so concurrent test runs never see each other's messages), and a fresh PostgreSQL database."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_missing("Redis", exc)
    prefix = f"xrq-test-{uuid.uuid4().hex[:10]}:"
    env = {"XRQ_DATABASE_URL": postgres_url, "XRQ_BROKER_URL": REDIS_URL, "XRQ_BROKER_PREFIX": prefix}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()
