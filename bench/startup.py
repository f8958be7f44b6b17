"""How long the cheap commands take to answer: `xrq --help`, every command's --help, status, reports...

    python -m bench.startup [--repeats 5] [--tree before=/tmp/xrq-base ...]

Each command runs as a fresh process (`.venv/bin/xrq ARGS`, what a user types) against a fresh
SQLite file with no broker, next to `python -c pass` (the interpreter's own start-up), interleaved:
every round runs `python -c pass` and then each command once, so a machine that slows down midway
slows all of them alike. The first round is a warm-up (disk cache, migrations) and is not counted.

With --tree LABEL=ROOT (repeatable), other trees (say a checkout of the previous commit, which has no
environment of its own) are timed in the same rounds, run by this interpreter with ROOT on
PYTHONPATH. The installed `xrq` (this tree) is labelled `xrq`.

Prints JSON: per command and tree, the median wall time (seconds) and that median less python's;
a command that exits non-zero is shown with its exit status instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "xrq"

# Lists every command path of the click group of the tree on PYTHONPATH.
LIST_COMMANDS = """
import json
import click
from cli.main import cli
def paths(group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from paths(command, (*prefix, name))
print(json.dumps([list(p) for p in paths(cli)]))
"""

# `xrq` run from the tree on PYTHONPATH rather than from the installed package.
RUN_FROM_TREE = """
import sys
from cli.main import main
sys.argv[0] = "xrq"
main()
"""


def cases(root: Path) -> list[tuple[str, ...]]:
    """`--help`, each command's --help (found from the click group), status, reports, backlog --dry-run."""
    found = subprocess.run([sys.executable, "-c", LIST_COMMANDS], capture_output=True, text=True,
                           check=True, env=environment(None, root))
    helps = [(*path, "--help") for path in json.loads(found.stdout)]
    return [("--help",), *[tuple(h) for h in helps], ("status",), ("reports",), ("backlog", "--dry-run")]


def environment(database: Path | None, root: Path | None = None) -> dict[str, str]:
    """The commands' environment: no XRQ_* of the caller's, and `root` (a tree) first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRQ_")}  # no broker, no inbox
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    if database is not None:
        env["XRQ_DATABASE_URL"] = f"sqlite:///{database}"
    return env


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="Counted rounds (after one warm-up round).")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=ROOT",
                        help="Another tree to time in the same rounds (no venv needed); repeatable.")
    args = parser.parse_args()
    trees = {label: Path(root).resolve() for label, _, root in (t.partition("=") for t in args.tree)}

    work = Path(tempfile.mkdtemp(prefix="xrq-startup-"))
    # Each tree gets its own database: a newer tree may have migrated it past what an older one knows.
    targets: dict[str, tuple[list[str], dict[str, str]]] = {"xrq": ([str(SCRIPT)], environment(work / "xrq.db"))}
    commands = cases(REPO)
    for label, root in trees.items():
        targets[label] = ([sys.executable, "-c", RUN_FROM_TREE], environment(work / f"{label}.db", root))
        commands += [c for c in cases(root) if c not in commands]  # a command one tree lacks: timed where it is

    python_times: list[float] = []
    times: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    failed: dict[tuple[str, tuple[str, ...]], int] = {}
    for round_no in range(args.repeats + 1):
        seconds, _ = timed([sys.executable, "-c", "pass"], environment(None), work)
        if round_no:
            python_times.append(seconds)
        for command in commands:
            for label, (prefix, env) in targets.items():
                seconds, code = timed([*prefix, *command], env, work)
                if code != 0:
                    failed[(label, command)] = code
                elif round_no:
                    times.setdefault((label, command), []).append(seconds)

    python = statistics.median(python_times)
    result: dict[str, object] = {
        "python": sys.version.split()[0], "repeats": args.repeats, "cpus": os.cpu_count(),
        "python_c_pass_s": round(python, 3), "commands": {}}
    for command in commands:
        row: dict[str, object] = {}
        for label in targets:
            key = (label, command)
            if key in failed:
                row[label] = {"exit_status": failed[key]}
            elif key in times:
                median = statistics.median(times[key])
                row[label] = {"median_s": round(median, 3), "over_python_s": round(median - python, 3),
                              "min_s": round(min(times[key]), 3)}
        result["commands"][" ".join(command)] = row  # type: ignore[index]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
