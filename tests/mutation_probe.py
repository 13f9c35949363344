"""The mutation probe (`make mutate`): do the fast tests catch the bugs that matter?

Each line of `tests/mutations.txt` plants one realistic one-line bug in an invariant (a fence
check, the outbox append, ack-after-delivery, ...) and names the fast tests that must catch it.
For every mutation the probe copies the checkout to a temporary directory, replaces the
original text (which must occur exactly once in its file: otherwise the list is stale and the
probe fails), checks the mutated file still compiles, and runs the named tests there with
pytest. Tests failing is the goal ("caught"); tests passing means the bug would ship
("survived"). Before any mutation, all named tests must pass on the unmutated copy, or
"caught" would mean nothing.

Why a small explicit runner and not mutmut or cosmic-ray: those generate every operator swap
of a Python module and run for hours; what is wanted here is a short, reviewed list of
targeted bugs, half of them in Lua scripts (which neither tool mutates), each checked against
its own few tests in seconds. The list is the specification; the runner only applies it.

Usage: python -m tests.mutation_probe [--jobs N] [--only TEXT] [--timeout S] [--list]
Exit status: 0 when every mutation was caught; 1 when one survived, is stale or errored; 2 when
the unmutated tests fail or the list cannot be read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTATIONS_FILE = ROOT / "tests" / "mutations.txt"
#: Fields of one line of the list, in order; the last one may contain the separator.
FIELDS = ("file", "original", "mutated", "tests", "invariant")
SEPARATOR = " | "
#: At most this many mutants run at once (the CI machine has two cores).
MAX_JOBS = 2
#: Per-test timeout inside a mutant's pytest run (s): a mutant that hangs a test is caught.
TEST_TIMEOUT_S = 60
#: Wall-clock limit of one mutant's pytest run (s); past it the mutant is an error.
RUN_TIMEOUT_S = 600
#: What a mutation can come to; only "caught" is good.
STATUSES = ("caught", "survived", "stale", "error")
#: Lines of a failing run's output shown with the verdict.
TAIL_LINES = 25


class ListError(Exception):
    """The mutation list cannot be read."""


@dataclass(frozen=True)
class Mutation:
    number: int  # its line in the list, to find it again
    file: str
    original: str
    mutated: str
    tests: tuple[str, ...]
    invariant: str


@dataclass(frozen=True)
class Verdict:
    mutation: Mutation
    status: str  # caught | survived | stale | error
    seconds: float
    detail: str = ""


# -- the list ---------------------------------------------------------------------------------


def parse(lines: Iterable[str]) -> list[Mutation]:
    """The mutations of the list: one per non-blank line not starting with '#'."""
    mutations = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.split(SEPARATOR, len(FIELDS) - 1)]
        if len(parts) != len(FIELDS) or not all(parts):
            raise ListError(f"line {number}: want {len(FIELDS)} non-empty fields {FIELDS}")
        file, original, mutated, tests, invariant = parts
        if original == mutated:
            raise ListError(f"line {number}: the mutated text is the original")
        mutations.append(Mutation(number, file, original, mutated, tuple(tests.split()), invariant))
    return mutations


def stale_reason(mutation: Mutation, root: Path) -> str | None:
    """Why `mutation` no longer applies to the tree at `root`, or None if it does."""
    path = root / mutation.file
    if not path.is_file():
        return f"{mutation.file} does not exist"
    count = path.read_text(encoding="utf-8").count(mutation.original)
    if count != 1:
        return f"original text found {count} times in {mutation.file} (must be exactly once)"
    for test in mutation.tests:
        if not (root / test.split("::")[0]).is_file():
            return f"test file of {test} does not exist"
    return None


# -- a copy of the checkout -------------------------------------------------------------------


def checkout_files(root: Path) -> list[str]:
    """Tracked files plus untracked ones git does not ignore (a test not yet committed counts);
    files deleted from the working tree are left out."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def copy_tree(root: Path, files: Sequence[str], dest: Path) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def apply(mutation: Mutation, tree: Path) -> None:
    path = tree / mutation.file
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(mutation.original, mutation.mutated, 1), encoding="utf-8")


def compile_error(path: Path) -> str | None:
    """A syntax error in a mutated Python or Lua file (a typo in the list would otherwise show
    up as failing tests: "caught" for the wrong reason)."""
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        try:
            compile(source, str(path), "exec")
        except SyntaxError as exc:
            return f"does not compile: {exc}"
    elif path.suffix == ".lua":
        return lua_syntax_error(source)
    return None


def lua_syntax_error(source: str) -> str | None:
    try:  # Redis runs Lua 5.1; lupa is a test dependency (fakeredis runs scripts with it)
        from lupa import lua51 as lua
    except ImportError:
        return None
    loaded = lua.LuaRuntime().eval("loadstring")(source)
    if isinstance(loaded, tuple) and loaded[0] is None:
        return f"does not compile: {loaded[1]}"
    return None


# -- running tests in a copy ------------------------------------------------------------------


def pytest_in(tree: Path, tests: Sequence[str], timeout_s: float) -> tuple[int, str]:
    """Run `tests` with the copy's code (cwd and PYTHONPATH); (exit code, output). -1: the run
    itself timed out."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        *tests,
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--timeout={timeout_s:g}",
    ]
    try:
        done = subprocess.run(
            command, cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout
        partial = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
        return -1, f"no verdict within {RUN_TIMEOUT_S} s\n{partial}"
    return done.returncode, done.stdout + done.stderr


def imports_from(tree: Path) -> str | None:
    """Where a fresh interpreter in the copy imports bot from, if not the copy: an installed
    bot shadowing the copy would make every mutation survive."""
    code = "import bot, config, tasks; print(bot.__file__, config.__file__, tasks.__file__)"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True
    )
    paths = out.stdout.split()
    if out.returncode != 0 or len(paths) != 3:
        return out.stderr.strip() or "cannot import bot in the copy"
    outside = [p for p in paths if not Path(p).resolve().is_relative_to(tree.resolve())]
    return f"imported from outside the copy: {outside}" if outside else None


def tail(output: str) -> str:
    return "\n".join(output.rstrip().splitlines()[-TAIL_LINES:])


def probe(mutation: Mutation, files: Sequence[str], timeout_s: float) -> Verdict:
    """Plant one mutation in a fresh copy and run its tests there."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bot-mutant-") as tmp:
        tree = Path(tmp)
        copy_tree(ROOT, files, tree)
        apply(mutation, tree)
        problem = compile_error(tree / mutation.file)
        if problem:
            return Verdict(mutation, "error", time.monotonic() - started, problem)
        code, output = pytest_in(tree, mutation.tests, timeout_s)
    seconds = time.monotonic() - started
    if code == 0:
        return Verdict(mutation, "survived", seconds, tail(output))
    if code == 1:  # pytest: some test failed
        return Verdict(mutation, "caught", seconds)
    return Verdict(mutation, "error", seconds, f"pytest exit {code}\n{tail(output)}")


def baseline(mutations: Sequence[Mutation], files: Sequence[str], timeout_s: float) -> str | None:
    """Every listed test on an unmutated copy: the problem, or None when all pass."""
    tests = sorted({test for m in mutations for test in m.tests})
    with tempfile.TemporaryDirectory(prefix="bot-unmutated-") as tmp:
        tree = Path(tmp)
        copy_tree(ROOT, files, tree)
        problem = imports_from(tree)
        if problem:
            return problem
        code, output = pytest_in(tree, tests, timeout_s)
    return None if code == 0 else f"pytest exit {code}\n{tail(output)}"


# -- the report -------------------------------------------------------------------------------


def table(verdicts: Sequence[Verdict]) -> str:
    """One row per mutation, columns aligned; the invariant, free text, goes last."""
    rows = [("line", "verdict", "s", "file", "invariant")]
    for v in verdicts:
        m = v.mutation
        rows.append((str(m.number), v.status, f"{v.seconds:.1f}", m.file, m.invariant))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def details(verdicts: Sequence[Verdict]) -> str:
    out = []
    for v in verdicts:
        if v.status == "caught":
            continue
        m = v.mutation
        out.append(
            f"--- line {m.number}: {v.status}: {m.file}\n"
            f"    {m.original!r}\n -> {m.mutated!r}\n    tests: {' '.join(m.tests)}\n{v.detail}"
        )
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------------


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation_probe", description=__doc__)
    parser.add_argument("--jobs", type=int, default=MAX_JOBS, choices=range(1, MAX_JOBS + 1))
    parser.add_argument("--only", help="only mutations whose file or invariant contains this")
    parser.add_argument("--timeout", type=float, default=TEST_TIMEOUT_S, help="per test, s")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--file", type=Path, default=MUTATIONS_FILE, help="the mutation list")
    return parser.parse_args(argv)


def selected(args: argparse.Namespace) -> list[Mutation]:
    mutations = parse(args.file.read_text(encoding="utf-8").splitlines())
    if args.only:
        mutations = [m for m in mutations if args.only in m.file or args.only in m.invariant]
    if not mutations:
        raise ListError("no mutation selected")
    return mutations


def run(mutations: Sequence[Mutation], jobs: int, timeout_s: float) -> list[Verdict]:
    stale = [Verdict(m, "stale", 0.0, r) for m in mutations if (r := stale_reason(m, ROOT))]
    if stale:  # the list no longer matches the code: say so before spending minutes on tests
        return stale
    files = checkout_files(ROOT)
    problem = baseline(mutations, files, timeout_s)
    if problem:
        raise ListError(f"the listed tests do not pass without any mutation:\n{problem}")
    print(f"baseline passed; probing {len(mutations)} mutations, {jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        verdicts = []
        for verdict in pool.map(lambda m: probe(m, files, timeout_s), mutations):
            print(f"  line {verdict.mutation.number}: {verdict.status}", flush=True)
            verdicts.append(verdict)
    return verdicts


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    started = time.monotonic()
    try:
        mutations = selected(args)
        if args.list:
            print(table([Verdict(m, "-", 0.0) for m in mutations]))
            return 0
        verdicts = run(mutations, args.jobs, args.timeout)
    except ListError as exc:
        print(f"mutation probe: {exc}", file=sys.stderr)
        return 2
    print(table(verdicts))
    failed = details(verdicts)
    if failed:
        print(failed)
    counts = {status: sum(v.status == status for v in verdicts) for status in STATUSES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(f"mutation probe: {summary} in {time.monotonic() - started:.0f} s")
    return 0 if counts["caught"] == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
