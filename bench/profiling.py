"""Where a bot job's time goes: py-spy samples of a worker's main process, one pool child and
the producer, summarised as text (top functions by own time, and a call tree).

Used by `python bench/fleet_bench.py --profile`; writes docs/profiles/{worker-main,pool-child,
producer}.txt. py-spy samples the running processes from outside (no instrumentation), 250 times
a second, counting only frames that are on the CPU (idle waits are left out).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "docs" / "profiles"
RATE = 250
#: Share of samples below which a call-tree node is not printed.
TREE_MIN_SHARE = 0.02
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]+)(?::\d+)?\)$")


@contextmanager
def spy(pid: int, raw: Path) -> Iterator[None]:
    """py-spy samples `pid` into `raw` (collapsed stacks) while the block runs."""
    exe = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")  # type: ignore[attr-defined]
    args = [exe, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw"]
    process = subprocess.Popen(
        [*args, "--nonblocking", "--output", str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def short(frame: str) -> str:
    """`function (path:line)` as `function (module path from site-packages or the repo)`."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/work/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    path = re.sub(r"^[^/]*main/", "", path)
    return f"{match['func']} ({path})"


def load(raw: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = [short(f) for f in stack.split(";")]
            stacks.append(
                (frames[1:] if frames and frames[0].startswith("process ") else frames, int(count))
            )
    return stacks


def summary(name: str, stacks: list[tuple[list[str], int]], top: int = 15) -> str:
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"# {name}: {total} samples on CPU at {RATE}/s", "", "## own time", ""]
    lines += [f"{c / total:6.1%}  {f}" for f, c in own.most_common(top)]
    lines += ["", "## inclusive time (bot's and Celery's own frames)", ""]
    ours = [(f, c) for f, c in inclusive.most_common() if _interesting(f)]
    lines += [f"{c / total:6.1%}  {f}" for f, c in ours[: top + 10]]
    lines += ["", "## call tree (nodes over 2 %)", ""]
    lines += tree(stacks, total)
    return "\n".join(lines) + "\n"


def _interesting(frame: str) -> bool:
    return any(part in frame for part in ("bot/", "celery/", "kombu/", "redis/", "pydantic"))


def tree(stacks: list[tuple[list[str], int]], total: int) -> list[str]:
    children: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    for frames, count in stacks:
        for depth in range(len(frames)):
            children[tuple(frames[:depth])][frames[depth]] += count
    lines: list[str] = []
    _walk(children, (), total, 0, lines)
    return lines


def _walk(
    children: dict[tuple[str, ...], Counter[str]],
    path: tuple[str, ...],
    total: int,
    indent: int,
    lines: list[str],
) -> None:
    kids = [
        (f, c)
        for f, c in children.get(path, Counter()).most_common()
        if c / total >= TREE_MIN_SHARE
    ]
    for frame, count in kids:
        # A chain of single children at the same share is printed as one line deeper down.
        node, shown = (*path, frame), frame
        while (
            len(grand := children.get(node, Counter())) == 1 and next(iter(grand.values())) == count
        ):
            node = (*node, next(iter(grand)))
            shown = node[-1]
        lines.append(f"{count / total:6.1%} {'  ' * indent}{shown}")
        _walk(children, node, total, indent + 1, lines)


def profile_bot_op(rig: Any, setup: Any, jobs: int) -> None:
    """One bot-op run under py-spy: the worker processes while they run `jobs` jobs, and this
    process while it publishes them."""
    from bench.fleet_bench import done, wait_done

    OUT.mkdir(parents=True, exist_ok=True)
    rig.redis(setup).flushall()
    worker = rig.worker(setup).start().wait_ready(60)
    try:
        app = rig.producer(setup)
        app.send_task(setup.task, kwargs={"n": 0}).get(timeout=30)  # warm: connections open
        from bot.client import Client

        client = Client(app)
        main, child = worker.pid, worker.children()[0]
        raws = {name: OUT / f"{name}.raw" for name in ("worker-main", "pool-child", "producer")}
        with spy(main, raws["worker-main"]), spy(child, raws["pool-child"]):
            with spy(os.getpid(), raws["producer"]):
                for i in range(jobs):
                    client.submit(setup.op, {"n": i})
            wait_done(rig.redis(setup), jobs + 1)
        print(f"{done(rig.redis(setup))} jobs done")
    finally:
        worker.stop(30)
    for name, raw in raws.items():
        text = summary(name, load(raw))
        (OUT / f"{name}.txt").write_text(text)
        raw.unlink()
        print(text)
