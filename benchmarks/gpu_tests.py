"""The test suite on a GPU machine, with pass counts per file.

    python -m benchmarks.gpu_tests [--jobs N] [--out DIR] [tests/test_x.py ...]

Runs every test file under ``tests/`` except those that build or read the
book (they need the book's toolchain, not a GPU), with the kernels compiled
for the GPU instead of interpreted. Tests run side by side in ``--jobs``
processes that share the GPU (pytest-xdist, test by test), so that the
many small kernel compilations use the machine's cores; a kernel that
faults takes down one worker, which is replaced, and the others go on.

Writes ``pytest.xml`` (JUnit), ``tests.jsonl`` (one line per test as it
finishes: outcome, seconds, peak GPU memory, a failure's report; see
``tests/conftest.py``) and ``tests.log`` (one line per file: passed, failed,
skipped, errors, seconds; the slowest tests and those with the largest GPU
memory peaks; then every failure's report) to ``--out``, prints the table and
exits non-zero if anything failed. A run stopped at ``--limit`` still has
``tests.jsonl``, and the summary is made from it.

Each worker runs PyTorch's CPU operations on ``cores // jobs`` threads (one at 12 workers on 16 cores), as
``make test`` does with ``OMP_NUM_THREADS=1``. Without it each of 12 workers started one thread per core, and
CPU-only tests took 15 to 270 times what they take on one free core: on 2026-12-07 the HiPPO table 116 s (0.43 s
on one thread of a CPU machine), a subprocess's ``import ssm_edu`` (test_dispatch) 52 s (3 s), the torchrun
test 88 s (5.4 s). Tests marked ``heavy`` (the longest in the logs of earlier runs) are handed out first and
two at a time (``--maxschedchunk 2``: xdist's default sends each worker a run of about 50 consecutive tests at
the start, which would put the heavy ones on one worker), so that no worker starts a long test near the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Files that need the book's toolchain (Jupyter Book, Chromium, nbval, a fresh venv), not a GPU.
NOT_ON_GPU = {"test_book.py", "test_browser.py", "test_student_build.py", "test_colab_setup.py",
              "test_notebooks.py", "test_packaging.py"}


# The files that test the Triton kernels, newest first: pytest-xdist hands out tests in this order, so a run cut
# by its limit has covered the compiled kernels before the model- and book-level files (those spend most of
# their time on the CPU: training loops, tables). The rest follow alphabetically.
KERNELS_FIRST = ["test_mamba3_ssd.py", "test_fused_steps.py", "test_ssd_bwd.py", "test_selective_bwd.py",
                 "test_mamba3_triton.py", "test_ssd.py", "test_selective.py", "test_state_update.py",
                 "test_ssd_first.py", "test_selective_first.py", "test_ssd_compile.py", "test_selective_compile.py",
                 "test_selective_ladder.py", "test_mamba3_block.py", "test_scan.py", "test_convolution.py",
                 "test_diagonal.py", "test_s4.py"]


def ordered(paths) -> list[pathlib.Path]:
    """Test files in the order the GPU phase runs them: KERNELS_FIRST, then the others by name."""
    rank = {name: i for i, name in enumerate(KERNELS_FIRST)}
    return sorted(paths, key=lambda p: (rank.get(p.name, len(rank)), p.name))


def _schedule_chunk(n):
    """``--maxschedchunk n`` where the installed pytest-xdist has that option (3.2 on); an older one would refuse
    the whole command line, so it gets none (and hands out its default runs of tests)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(v) for v in version("pytest-xdist").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return []
    return ["--maxschedchunk", str(n)] if (major, minor) >= (3, 2) else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_tests")
    parser.add_argument("files", nargs="*", type=pathlib.Path)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "gpu-session")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per test")
    parser.add_argument("--limit", type=float, default=None, help="seconds for the whole run; then it is stopped")
    parser.add_argument("--resume", type=pathlib.Path, default=None,
                        help="an earlier run's tests.jsonl: run only what it does not record as passed or skipped, "
                             "and count both runs in the summary")
    args = parser.parse_args(argv)
    files = args.files or ordered(p for p in (ROOT / "tests").glob("test_*.py") if p.name not in NOT_ON_GPU)
    args.out.mkdir(parents=True, exist_ok=True)
    xml = args.out / "pytest.xml"
    # -v: xdist prints each result as it comes, so a run cut short by its time limit still shows what passed
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-v", "--tb=short",
           "-n", str(args.jobs), "--dist", "load", *_schedule_chunk(2), f"--timeout={args.timeout}",
           f"--junitxml={xml}", *map(str, files)]
    log = args.out / "pytest.out"
    jsonl = args.out / "tests.jsonl"
    earlier = args.resume.read_text() if args.resume and args.resume.exists() else ""
    jsonl.unlink(missing_ok=True)
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} | os.environ | {
        "SSM_EDU_TEST_LOG": str(jsonl.resolve()), "SSM_EDU_HEAVY_FIRST": "1",  # tests/conftest.py
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}  # freed memory goes back to the GPU
    if earlier:  # the earlier lines open the new log, so that the summary counts both runs
        skip = args.out / "tests.earlier.jsonl"
        skip.write_text(earlier)
        jsonl.write_text(earlier)
        env["SSM_EDU_TEST_SKIP"] = str(skip.resolve())
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            rc = proc.wait(timeout=args.limit)
        except subprocess.TimeoutExpired:  # stop pytest and its workers, then report what finished
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
            xml.unlink(missing_ok=True)
    if earlier:
        table, failures = summarise_jsonl(jsonl, len([x for x in earlier.splitlines() if x.strip()]))
        table.insert(0, f"(resumed: {len(earlier.splitlines())} results from {args.resume}, then this run)")
    else:
        table, failures = summarise(xml) if xml.exists() else summarise_verbose(log)
    text = "\n".join(table + [""] + costs(jsonl) + [""] + failures + [""] + reports(jsonl)) + "\n"
    (args.out / "tests.log").write_text(text)
    print("\n".join(table))
    return rc


def _lines(jsonl: pathlib.Path) -> list[dict]:
    if not jsonl.exists():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


def costs(jsonl: pathlib.Path, top: int = 15) -> list[str]:
    """The slowest tests, and those with the largest GPU memory peaks (to plan the next run)."""
    rows = _lines(jsonl)
    out = [f"slowest {top}:"] + [f"  {r['seconds']:7.1f} s  {r['test']}" for r in
                                 sorted(rows, key=lambda r: -r["seconds"])[:top]]
    peaks = [r for r in rows if r.get("peak_gib")]
    out += ["largest GPU memory peaks:"] + [f"  {r['peak_gib']:7.2f} GiB  {r['test']}" for r in
                                             sorted(peaks, key=lambda r: -r["peak_gib"])[:top]]
    return out


def reports(jsonl: pathlib.Path) -> list[str]:
    """Every failure's report, as the test process wrote it when the test ended."""
    return [f"==== {r['test']} ({r['when']})\n{r.get('report', '')}" for r in _lines(jsonl) if r["outcome"] == "failed"]


def summarise_verbose(log: pathlib.Path) -> tuple[list[str], list[str]]:
    """Per-file counts from pytest's -v lines (``[gw3] PASSED tests/test_x.py::name``), for a run cut short."""
    counts = collections.defaultdict(collections.Counter)
    failures = []
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"\[gw\d+\] \[ *\d+%\] (PASSED|FAILED|SKIPPED|ERROR) (\S+)", line)
        if m:
            outcome, test = m.groups()
            file = test.split("::")[0].split("/")[-1]
            counts[file][{"PASSED": "passed", "FAILED": "failed", "SKIPPED": "skipped", "ERROR": "errors"}[outcome]] += 1
            if outcome in ("FAILED", "ERROR"):
                failures.append(test)
    table = ["(cut short: counts from pytest's -v lines, no times)",
             f"{'file':32s} {'passed':>7s} {'failed':>7s} {'errors':>7s} {'skipped':>8s}"]
    for file in sorted(counts):
        c = counts[file]
        table.append(f"{file:32s} {c['passed']:7d} {c['failed']:7d} {c['errors']:7d} {c['skipped']:8d}")
    return table, failures


def summarise_jsonl(jsonl: pathlib.Path, n_earlier: int = 0) -> tuple[list[str], list[str]]:
    """Per-file counts from the one-line-per-test log of a resumed run: its first ``n_earlier`` lines come from
    the earlier run. Each test is counted once: by this run's records where it ran again (a failure in any
    of them, setup or teardown included, counts), else by the earlier run's."""
    records = _lines(jsonl)
    rerun = {r["test"] for r in records[n_earlier:]}
    last = {}
    for i, r in enumerate(records):
        if (i < n_earlier) == (r["test"] in rerun):
            continue  # an earlier record of a test that ran again
        if r["test"] not in last or last[r["test"]]["outcome"] != "failed":
            last[r["test"]] = r
    counts = collections.defaultdict(collections.Counter)
    seconds = collections.Counter()
    failures = []
    for test, r in last.items():
        file = test.split("::")[0].split("/")[-1]
        kind = {"passed": "passed", "skipped": "skipped"}.get(r["outcome"], "failed" if r["when"] == "call" else "errors")
        counts[file][kind] += 1
        seconds[file] += r.get("seconds") or 0
        if kind in ("failed", "errors"):
            failures.append(test)
    table = [f"{'file':32s} {'passed':>7s} {'failed':>7s} {'errors':>7s} {'skipped':>8s} {'seconds':>8s}"]
    total = collections.Counter()
    for file in sorted(counts):
        c = counts[file]
        total.update(c)
        table.append(f"{file:32s} {c['passed']:7d} {c['failed']:7d} {c['errors']:7d} {c['skipped']:8d} "
                     f"{seconds[file]:8.1f}")
    table.append(f"{'total':32s} {total['passed']:7d} {total['failed']:7d} {total['errors']:7d} {total['skipped']:8d} "
                 f"{sum(seconds.values()):8.1f}")
    return table, failures


def summarise(xml: pathlib.Path) -> tuple[list[str], list[str]]:
    """Per-file counts from a JUnit file, and the failures' first lines."""
    counts = collections.defaultdict(collections.Counter)
    failures = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("classname", "").split(".")
        file = next((f"{part}.py" for part in name if part.startswith("test_")), "?")
        c = counts[file]
        c["seconds"] += float(case.get("time") or 0)
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            c["failed" if "failure" in kinds else "errors"] += 1
            child = case.find("failure") if "failure" in kinds else case.find("error")
            failures.append(f"{file}::{case.get('name')}: {(child.get('message') or '').splitlines()[0][:300] if child.get('message') else ''}")
        elif "skipped" in kinds:
            c["skipped"] += 1
        else:
            c["passed"] += 1
    table = [f"{'file':32s} {'passed':>7s} {'failed':>7s} {'errors':>7s} {'skipped':>8s} {'seconds':>8s}"]
    total = collections.Counter()
    for file in sorted(counts):
        c = counts[file]
        total.update(c)
        table.append(f"{file:32s} {c['passed']:7d} {c['failed']:7d} {c['errors']:7d} {c['skipped']:8d} {c['seconds']:8.1f}")
    table.append(f"{'total':32s} {total['passed']:7d} {total['failed']:7d} {total['errors']:7d} {total['skipped']:8d} "
                 f"{total['seconds']:8.1f}")
    return table, failures


if __name__ == "__main__":
    raise SystemExit(main())
