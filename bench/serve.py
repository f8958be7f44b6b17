"""Latency of the review application under load: worklist and study page, p50 and p95, with 20
concurrent signed-in sessions, on PostgreSQL holding 1,000,000 reports.

    python bench/serve.py [--reports 1000000] [--sessions 20] [--seconds 60] [--workers 2] [--keep]

Makes a PostgreSQL database of its own (`xrq_bench_serve`, reused with --keep when it already holds
the reports asked for) and fills it in bulk in SQL (generate_series): one model, one job, N studies
with one image each (a real X-ray of examples/iu), N reports made of radiology sentences, one a
second apart; 5% of them signed and 2% rejected, with their versions. Then it starts `xrq serve
--workers W` on a free port and runs S sessions (each signs in, then loops for --seconds): the
worklist (first page; by state, by job, by model, by text; an older page through its cursor) and a
study page of a random report. Prints a table and, with --json, JSON: p50/p95/max per kind of page.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent

import psycopg  # noqa: E402

from testing.services import free_port, port_open, wait_for  # noqa: E402

ADMIN_URL = os.environ.get("XRQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "xrq_bench_serve"
IMAGE = REPO / "examples" / "iu" / "1000_IM-0003-1001.dcm.png"
SENTENCES = [
    "The heart is normal in size.", "The mediastinum is unremarkable.", "The lungs are clear.",
    "No pleural effusion or pneumothorax.", "Mild cardiomegaly.", "Small left pleural effusion.",
    "Patchy opacity in the right lower lobe.", "No acute cardiopulmonary abnormality.",
    "Degenerative changes of the thoracic spine.", "Calcified granuloma in the left upper lobe.",
    "Low lung volumes with bibasilar atelectasis.", "Stable postoperative changes of the sternum.",
    "Hyperinflated lungs consistent with emphysema.", "Interstitial markings are mildly prominent.",
    "No focal consolidation.", "Aortic tortuosity.", "Right-sided central venous catheter in place.",
    "Blunting of the right costophrenic angle.", "Healed fracture of the left posterior rib.",
    "Pulmonary vascular congestion without frank edema.",
]
SESSIONS_PASSWORD = "bench password 1"


def fill(url: str, n: int) -> None:
    """N reports in bulk (SQL generate_series), plus reviews; the schema made by xrq's migrations."""
    from db.engine import open_database
    from web.auth import hash_password

    db = open_database(url)
    db.dispose()
    sha = hashlib.sha256(IMAGE.read_bytes()).hexdigest()
    sentences = "ARRAY[" + ",".join("'" + s.replace("'", "''") + "'" for s in SENTENCES) + "]"
    k = len(SENTENCES)
    steps = [
        ("model and job", "INSERT INTO models (id, name, fingerprint, meta, created_at) VALUES "
                          "(1, 'bench', repeat('b', 64), '{}', now()), (2, 'bench-2', repeat('c', 64), '{}', now());"
                          "INSERT INTO jobs (id, fingerprint, source, model_id, group_by, batch_size, settings, "
                          f"created_at) VALUES (1, repeat('j', 64), '{IMAGE.parent}', 1, 'file', 8, '{{}}', now()),"
                          f" (2, repeat('k', 64), '{IMAGE.parent}', 2, 'file', 8, '{{}}', now())"),
        ("studies", f"INSERT INTO studies (id, fingerprint, uid, grouping, created_at) SELECT i, "
                    f"md5(i::text) || md5((-i)::text), 'CXR' || i, 'file', now() FROM generate_series(1, {n}) i"),
        ("images", f"INSERT INTO images (job_id, study_id, path, relpath, sha256, size_bytes) SELECT "
                   f"CASE WHEN i % 10 = 0 THEN 2 ELSE 1 END, i, '{IMAGE}', '{IMAGE.name}', '{sha}', "
                   f"{IMAGE.stat().st_size} FROM generate_series(1, {n}) i"),
        ("reports", f"INSERT INTO reports (id, study_id, model_id, job_id, text, settings, created_at) SELECT i, i, "
                    f"CASE WHEN i % 10 = 0 THEN 2 ELSE 1 END, CASE WHEN i % 10 = 0 THEN 2 ELSE 1 END, "
                    f"array_to_string(ARRAY[(s)[1 + i % {k}], (s)[1 + (i / 7) % {k}], (s)[1 + (i / 53) % {k}]], ' '), "
                    f"'{{}}', now() - make_interval(secs => {n} - i) "
                    f"FROM generate_series(1, {n}) i, (SELECT {sentences} AS s) sentences"),
        ("sequences", "SELECT setval(pg_get_serial_sequence('reports', 'id'), (SELECT max(id) FROM reports));"
                      "SELECT setval(pg_get_serial_sequence('studies', 'id'), (SELECT max(id) FROM studies));"
                      "SELECT setval(pg_get_serial_sequence('models', 'id'), 2);"
                      "SELECT setval(pg_get_serial_sequence('jobs', 'id'), 2)"),
    ]
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        # Indexes are built once after the rows are in (a GIN index filled row by row is many times slower).
        indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('reports', 'images', "
                               "'studies') AND indexdef NOT LIKE '%UNIQUE%'").fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        steps.append(("indexes", ";".join(definition for _, definition in indexes)))
        for name, sql in steps:
            started = time.perf_counter()
            for statement in sql.split(";"):
                conn.execute(statement)
            print(f"  {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        hashed = hash_password(SESSIONS_PASSWORD)
        conn.execute("INSERT INTO users (name, password_hash, role, disabled, failed_logins, created_at) "
                     "SELECT 'reader' || i, %s, 'reviewer', false, 0, now() FROM generate_series(1, 40) i", (hashed,))
        started = time.perf_counter()
        conn.execute("INSERT INTO reviews (report_id, state, version, final_text, signed_by, signed_at, "
                     "reject_reason, updated_at) SELECT id, CASE WHEN id % 100 < 5 THEN 'signed' ELSE 'rejected' END, "
                     "1, CASE WHEN id % 100 < 5 THEN text END, CASE WHEN id % 100 < 5 THEN 1 END, "
                     "CASE WHEN id % 100 < 5 THEN created_at END, CASE WHEN id % 100 >= 5 THEN 'wrong side' END, "
                     "created_at FROM reports WHERE id % 100 < 7")
        conn.execute("INSERT INTO review_versions (report_id, version, action, text, reason, author_id, created_at) "
                     "SELECT v.report_id, 1, CASE WHEN v.state = 'signed' THEN 'sign' ELSE 'reject' END, r.text, "
                     "v.reject_reason, 1, v.updated_at FROM reviews v JOIN reports r ON r.id = v.report_id")
        print(f"  reviews: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        print(f"  vacuum analyze: {time.perf_counter() - started:.1f} s", file=sys.stderr)


def prepare(n: int, keep: bool) -> str:
    admin = ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    url = f"{admin.rsplit('/', 1)[0]}/{DB_NAME}"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
    if exists and keep:
        with psycopg.connect(url) as conn:
            have = conn.execute("SELECT count(*) FROM reports").fetchone()
        if have and have[0] == n:
            print(f"Reusing {DB_NAME} ({n:,} reports)", file=sys.stderr)
            return url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    print(f"Filling {DB_NAME} with {n:,} reports", file=sys.stderr)
    fill(url, n)
    return url


async def session(base: str, user: str, until: float, n: int, samples: dict[str, list[float]], think: float) -> None:
    import httpx

    rng = random.Random(user)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        page = await client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        signed = await client.post("/login", data={"user": user, "password": SESSIONS_PASSWORD,
                                                   "csrf_token": token.group(1), "next": "/"})
        assert signed.status_code in (200, 303), signed.status_code
        older: str | None = None
        kinds = ["worklist", "worklist state=draft", "worklist state=signed", "worklist job", "worklist model",
                 "worklist text", "worklist older page", "study page"]
        while time.monotonic() < until:
            kind = rng.choice(kinds)
            path = {"worklist": "/", "worklist state=draft": "/?state=draft", "worklist state=signed": "/?state=signed",
                    "worklist job": "/?job=2", "worklist model": "/?model=bench-2",
                    "worklist text": "/?q=" + rng.choice(["effusion", "emphysema", "catheter", "granuloma"]),
                    "worklist older page": older or "/", "study page": f"/reports/{rng.randint(1, n)}"}[kind]
            started = time.perf_counter()
            response = await client.get(path)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"{path}: HTTP {response.status_code}")
            samples.setdefault(kind, []).append(elapsed * 1000)
            if think:  # a reader's pace: reading the page before the next click
                await asyncio.sleep(rng.uniform(0, 2 * think))
            if kind.startswith("worklist"):
                found = re.search(r'href="/\?([^"]+)" rel="next"', response.text)
                older = "/?" + found.group(1).replace("&amp;", "&") if found else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--keep", action="store_true", help="reuse the database when it holds --reports")
    parser.add_argument("--think", type=float, default=0.0,
                        help="mean seconds a session waits between requests (0: back to back, a stress test)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    url = prepare(args.reports, args.keep)
    port = free_port()
    env = {**os.environ, "XRQ_DATABASE_URL": url, "XRQ_SECRET_KEY": "bench-" + "k" * 40, "PYTHONPATH": str(REPO)}
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / "xrq-bench-serve.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-c", "from cli.main import main; main()", "serve", "--port", str(port),
                               "--workers", str(args.workers)], cwd=REPO, env=env, stdout=log, stderr=log,
                              start_new_session=True)
    try:
        wait_for(lambda: port_open(port), timeout=60, what="xrq serve to listen")
        samples: dict[str, list[float]] = {}
        load_before = os.getloadavg()[0]
        until = time.monotonic() + args.seconds

        async def run() -> None:
            await asyncio.gather(*(session(f"http://127.0.0.1:{port}", f"reader{i + 1}", until, args.reports, samples,
                                           args.think) for i in range(args.sessions)))

        asyncio.run(run())
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    worklist = [v for k, vs in samples.items() if k.startswith("worklist") for v in vs]
    rows = {**{k: samples[k] for k in sorted(samples)}, "worklist (all kinds)": worklist}
    result = {k: {"requests": len(v), "p50_ms": round(statistics.median(v), 1), "p95_ms": round(percentile(v, 0.95), 1),
                  "max_ms": round(max(v), 1)} for k, v in rows.items() if v}
    total = sum(len(v) for v in samples.values())
    result["setup"] = {"reports": args.reports, "sessions": args.sessions, "seconds": args.seconds,
                       "think_s": args.think, "server_processes": args.workers, "cpus": os.cpu_count(),
                       "requests_per_s": round(total / args.seconds, 1),
                       "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'page':<26} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for kind, r in result.items():
        if kind != "setup":
            print(f"{kind:<26} {r['requests']:>8} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['max_ms']:>8}")
    print(json.dumps(result["setup"]))


if __name__ == "__main__":
    main()
