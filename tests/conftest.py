"""Shared pytest set-up: a non-interactive matplotlib backend, a fixed seed per test, and on a GPU a tidy memory.

On a GPU the caching allocator of each test process keeps the peak of every test it ran; with several test
processes and notebooks sharing one GPU, that cache once held 64 GiB while notebooks ran out of memory. So each
test hands its cached blocks back when it ends. With ``SSM_EDU_TEST_LOG`` set (``benchmarks/gpu_tests.py`` sets
it), each test also appends one line to that file as it finishes: its outcome, seconds, peak GPU memory and, for
a failure, the report, so that a run cut short by its time limit still tells what failed and why. With
``SSM_EDU_TEST_SKIP`` naming such a file from an earlier run, the tests it records as passed or skipped (and
never as failed) are deselected: a cut run goes on where it stopped (``gpu_tests.py --resume``).
"""

import json
import os
import time

import matplotlib

# In this process only: setting MPLBACKEND in the environment instead would
# reach the notebook kernels (nbval, the book build) and replace their inline
# backend, so that no figure would be rendered.
matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _gpu_memory(request):
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    request.node.start = time.perf_counter()
    yield
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    log = os.environ.get("SSM_EDU_TEST_LOG")
    if not log or (report.when != "call" and report.passed):
        return
    line = {"test": item.nodeid, "when": report.when, "outcome": report.outcome,
            "seconds": round(time.perf_counter() - getattr(item, "start", time.perf_counter()), 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if torch.cuda.is_available() and torch.cuda.is_initialized() else None}
    if report.failed:
        line["report"] = report.longreprtext[-4000:]
    with open(log, "a") as f:  # one line, appended at once: the workers share the file
        f.write(json.dumps(line) + "\n")


@pytest.fixture
def gen():
    """A fresh, seeded generator for tests that draw random inputs."""
    return torch.Generator().manual_seed(1234)


def pytest_collection_modifyitems(config, items):
    """Start the book builds first (and, in the GPU test phase, the tests marked ``heavy``).

    The from-scratch book build executes every chapter and is by far the
    longest test. With ``-n 2 --dist loadfile`` (make test) a file is handed to
    a worker in collection order, so putting it first lets the other worker run
    the rest of the suite meanwhile instead of leaving the build for the end.
    """
    heavy_first = bool(os.environ.get("SSM_EDU_HEAVY_FIRST"))  # benchmarks/gpu_tests.py: for xdist's tail
    items.sort(key=lambda item: (0 if item.get_closest_marker("book") else 1,
                                 0 if heavy_first and item.get_closest_marker("heavy") else 1))
    done = _done_earlier(os.environ.get("SSM_EDU_TEST_SKIP"))
    if done:
        drop = [item for item in items if item.nodeid in done]
        items[:] = [item for item in items if item.nodeid not in done]
        config.hook.pytest_deselected(items=drop)


def _done_earlier(path: str | None) -> set[str]:
    """The tests an earlier run's log (``SSM_EDU_TEST_LOG`` lines) records as passed or skipped, never failed."""
    if not path or not os.path.exists(path):
        return set()
    ok, failed = set(), set()
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                (failed if r["outcome"] == "failed" else ok).add(r["test"])
    return ok - failed
