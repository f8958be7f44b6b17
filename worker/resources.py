"""How many CPU threads decode images and how many torch uses, so the two never fight over the cores.

Decoding (Pillow, zlib, pydicom: they release the GIL, so threads scale) overlaps generation. On a
CPU device the model needs cores too, so the host's cores are split between them: `plan_threads`
gives the static split, and `Balance` moves it after every batch to the CPU time each stage took (a
small model leaves every core to decoding, a large one takes most). On a GPU the model needs one
core to drive the device and every other core decodes. Several worker processes on
one host (`xrq worker --concurrency N`) share its cores: each gets its share.

`XRQ_DECODE_WORKERS` (a number) and `OMP_NUM_THREADS` (torch's threads) override the plan.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


def host_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPlan:
    decode_workers: int  # threads decoding and preprocessing images
    torch_threads: int  # torch's intra-op threads (the model on a CPU; CPU-side work on a GPU)


def plan_threads(device_type: str, *, processes: int = 1, decode_workers: int | None = None,
                 cores: int | None = None, env: dict[str, str] | None = None) -> ThreadPlan:
    """Split this process's share of the cores between decoding and torch.

    A CPU device: half the share each (decoding and generation overlap, and each is about half the
    work on a CPU); a GPU: one core for torch, the rest decode. Explicit numbers win.
    """
    env = dict(os.environ) if env is None else env
    share = core_share(processes, cores)
    if device_type == "cuda":
        torch_threads = 1
        decode = max(1, share - 1)
    else:
        torch_threads = max(1, share // 2)
        decode = max(1, share - torch_threads)
    torch_threads = fixed_torch_threads(env) or torch_threads
    return ThreadPlan(decode_workers=decode_workers or decode, torch_threads=torch_threads)


def core_share(processes: int = 1, cores: int | None = None) -> int:
    """This process's share of the host's cores, when `processes` worker processes share them."""
    return max(1, (cores or host_cores()) // max(1, processes))


def fixed_torch_threads(env: dict[str, str] | None = None) -> int | None:
    """Torch's threads as set by hand (OMP_NUM_THREADS), or None."""
    value = (os.environ if env is None else env).get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def apply_torch_threads(plan: ThreadPlan) -> None:
    """Set torch's intra-op threads to the plan (a no-op when already so)."""
    import torch

    if torch.get_num_threads() != plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)


def split_cores(share: int, decode_cpu_s: float, model_cpu_s: float) -> ThreadPlan:
    """The split of `share` cores that lets decoding and the model, running side by side, finish
    together: each gets cores in proportion to the CPU time it measured, rounded up (so one of the two
    may run a thread over the share: it is the one that needs less than a core of it).

    On 2 cores a small model that needs 5% of the time no longer holds a core that decoding needed:
    2 decode workers and 1 torch thread; an even split stays 1 and 1.
    """
    total = decode_cpu_s + model_cpu_s
    if share <= 1 or total <= 0:
        return ThreadPlan(decode_workers=share, torch_threads=max(1, share // 2))
    torch_threads = min(share, max(1, math.ceil(share * model_cpu_s / total - 1e-9)))
    decode = min(share, max(1, math.ceil(share * decode_cpu_s / total - 1e-9)))
    return ThreadPlan(decode_workers=decode, torch_threads=torch_threads)


@dataclass
class Balance:
    """Balances a CPU host's share of cores between decoding and the model from measured stage times.

    After each batch the pipeline reports the CPU seconds its decoding and its model took
    (`observe`); the estimate is a running mean with the latest batch weighted half, so a change of
    model or of images shows within a few batches. What was set by hand stays as set: `torch_threads`
    (OMP_NUM_THREADS) or `decode_workers` (XRQ_DECODE_WORKERS).
    """

    share: int
    torch_threads: int | None = None  # fixed by hand
    decode_workers: int | None = None  # fixed by hand
    decode_cpu_s: float = 0.0
    model_cpu_s: float = 0.0
    seen: int = 0

    def plan(self) -> ThreadPlan:
        """The split to use now: before any measurement, decoding gets the whole share (the first batch
        decodes alone: no model runs beside it)."""
        if self.seen:
            split = split_cores(self.share, self.decode_cpu_s, self.model_cpu_s)
        else:
            split = ThreadPlan(decode_workers=self.share, torch_threads=max(1, self.share // 2))
        return ThreadPlan(decode_workers=self.decode_workers or split.decode_workers,
                          torch_threads=self.torch_threads or split.torch_threads)

    def observe(self, decode_cpu_s: float, model_cpu_s: float, studies: int) -> ThreadPlan:
        """Take one batch's CPU seconds (per study, so batches of any size weigh alike) into the estimate."""
        if studies > 0 and decode_cpu_s + model_cpu_s > 0:
            weight = 1.0 if not self.seen else 0.5
            self.decode_cpu_s += weight * (decode_cpu_s / studies - self.decode_cpu_s)
            self.model_cpu_s += weight * (model_cpu_s / studies - self.model_cpu_s)
            self.seen += 1
        return self.plan()
