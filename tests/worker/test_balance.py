"""On a CPU, decoding and the model split the cores from measured stage times (worker/resources.Balance).

The static plan gave each half the cores: on 2 cores a small model that needs almost none held one
that decoding needed (bench/pipeline.py: 0.52 of the decode-only bound on all cores; 0.90 balanced).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

from db import jobs
from tests.conftest import EXAMPLES
from worker import decoding, runtime
from worker.decoding import DecodePool, Limits
from worker.resources import Balance, ThreadPlan, split_cores
from worker.settings import Settings
from worker.submit import submit_folder


def test_the_cores_follow_the_measured_cpu_time() -> None:
    assert split_cores(2, decode_cpu_s=0.95, model_cpu_s=0.05) == ThreadPlan(2, 1)  # a small model: decode on both
    assert split_cores(2, decode_cpu_s=0.5, model_cpu_s=0.5) == ThreadPlan(1, 1)
    assert split_cores(2, decode_cpu_s=0.05, model_cpu_s=0.95) == ThreadPlan(1, 2)  # a large model
    assert split_cores(16, decode_cpu_s=0.7, model_cpu_s=0.3) == ThreadPlan(12, 5)  # over the share by one at most
    assert split_cores(16, decode_cpu_s=1.0, model_cpu_s=0.0) == ThreadPlan(16, 1)
    assert split_cores(1, decode_cpu_s=0.3, model_cpu_s=0.7) == ThreadPlan(1, 1)
    assert split_cores(8, 0.0, 0.0) == ThreadPlan(8, 4)  # nothing measured yet


def test_the_balance_starts_with_decoding_alone_and_learns_per_study() -> None:
    balance = Balance(share=4)
    assert balance.plan() == ThreadPlan(4, 2)  # the first batch decodes with nothing beside it
    assert balance.observe(decode_cpu_s=3.0, model_cpu_s=1.0, studies=10) == ThreadPlan(3, 1)
    assert balance.observe(decode_cpu_s=0.0, model_cpu_s=0.0, studies=0) == ThreadPlan(3, 1)  # nothing learnt
    # The model became the larger part (another model): the latest batch weighs half.
    for _ in range(4):
        plan = balance.observe(decode_cpu_s=1.0, model_cpu_s=30.0, studies=10)
    assert plan == ThreadPlan(1, 4)


def test_numbers_set_by_hand_stay_as_set() -> None:
    balance = Balance(share=4, torch_threads=1, decode_workers=2)
    assert balance.observe(decode_cpu_s=0.0, model_cpu_s=9.0, studies=3) == ThreadPlan(2, 1)


def _refs(count: int) -> list[tuple[jobs.ImageRef, str]]:
    paths = sorted(EXAMPLES.glob("*.png"))[:count]
    return [(jobs.ImageRef(i, str(p), p.name, hashlib.sha256(p.read_bytes()).hexdigest()), str(p.parent))
            for i, p in enumerate(paths)]


def test_the_pool_keeps_at_most_its_concurrency_in_flight_and_counts_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.network.bundle import build

    busy, most, full, lock = [0], [0], [2], threading.Condition()
    real = decoding.load_view

    def counted(*args: Any) -> Any:
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
            lock.notify_all()
            # Wait (a bounded while) for the window to fill, so that "at most" is also "as many as".
            lock.wait_for(lambda: busy[0] >= full[0], timeout=5)
        try:
            return real(*args)
        finally:
            with lock:
                busy[0] -= 1

    monkeypatch.setattr(decoding, "load_view", counted)
    pool = DecodePool(build("tiny").processor, Limits(max_pixels=50_000_000, decode_workers=4))
    try:
        refs = _refs(8)
        pool.concurrency = 2
        first = list(pool.map(refs))
        assert most[0] == 2 and pool.cpu_s > 0
        assert [r[0] for r in first if isinstance(r, tuple)] == [_size(ref) for ref, _ in refs]  # in order
        pool.concurrency, most[0], full[0] = 4, 0, 4
        list(pool.map(refs))
        assert most[0] == 4
    finally:
        pool.close()


def _size(ref: jobs.ImageRef) -> tuple[int, int]:
    from PIL import Image

    with Image.open(ref.path) as image:
        return image.size


def test_a_cpu_run_measures_each_batch_and_sets_the_split(tiny_model: Path, iu_folder: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What `xrq submit` runs: each batch's CPU seconds reach the balance, and the pool and torch get its plan."""
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("worker.resources.host_cores", lambda: 2)
    threads = torch.get_num_threads()
    settings = Settings(database_url=f"sqlite:///{tmp_path}/xrq.db", model=str(tiny_model), batch_size=1,
                        max_new_tokens=2)
    try:
        result = submit_folder(settings, iu_folder)
        assert result.summary.counts == {"done": 4}
        [balance] = [b for key, b in runtime._balances.items() if key[1] == 2 and key[3] is None]
        assert balance.seen == 4  # one observation a batch
        assert balance.decode_cpu_s > 0 and balance.model_cpu_s > 0
        # The split follows what was measured (the tiny model's share varies with the machine's load:
        # split_cores' own test pins the rule), and torch was given it.
        plan = balance.plan()
        assert plan == split_cores(2, balance.decode_cpu_s, balance.model_cpu_s)
        assert torch.get_num_threads() == plan.torch_threads
    finally:
        torch.set_num_threads(threads)
        runtime._balances.clear()
