"""How many CPU threads decode images and how many torch uses, so the two never fight over the cores.

Decoding (Pillow, zlib, pydicom: they release the GIL, so threads scale) overlaps generation. On a
CPU device the model needs cores too, so the host's cores are split between them; on a GPU the
model needs one core to drive the device and every other core decodes. Several worker processes on
one host (`xrq worker --concurrency N`) share its cores: each gets its share.

`XRQ_DECODE_WORKERS` (a number) and `OMP_NUM_THREADS` (torch's threads) override the plan.
"""

from __future__ import annotations

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
    share = max(1, (cores or host_cores()) // max(1, processes))
    if device_type == "cuda":
        torch_threads = 1
        decode = max(1, share - 1)
    else:
        torch_threads = max(1, share // 2)
        decode = max(1, share - torch_threads)
    if env.get("OMP_NUM_THREADS", "").isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        torch_threads = int(env["OMP_NUM_THREADS"])
    return ThreadPlan(decode_workers=decode_workers or decode, torch_threads=torch_threads)


def apply_torch_threads(plan: ThreadPlan) -> None:
    """Set torch's intra-op threads to the plan (a no-op when already so)."""
    import torch

    if torch.get_num_threads() != plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)
