"""The benchmark entry point: it refuses clearly without a GPU, its registry is importable, the offline compile runs."""

import json
import pathlib
import subprocess
import sys

import pytest
import torch

from benchmarks.suite import OPS, gpu_slug


def test_registry_and_slug():
    assert "discretize_diag" in OPS
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this checks the refusal on a machine without a CUDA GPU")
def test_bench_refuses_without_gpu():
    out = subprocess.run([sys.executable, "-m", "benchmarks"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "no CUDA GPU found" in out.stderr


def test_offline_compile_of_the_default_selective_scan():
    """benchmarks/compile_selective.py (kernels/selective.py's table): the default compiles for sm_90 without
    spilling, and its main loop is found (instructions and MUFU operations counted). A subprocess: the script
    turns the Triton interpreter off before the kernels are imported."""
    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "compile_selective.py"
    out = subprocess.run([sys.executable, str(script), "(the default)"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[-1]
    assert "COMPILE ERROR" not in line, line
    fields = line.split()
    regs, spill = int(fields[4]), fields[5]
    instr, mufu = int(fields[9]), int(fields[10].split("(")[0])
    assert 0 < regs <= 255 and spill == "0/0", line
    assert instr > 100 and mufu > 0, line


def test_a_cut_gpu_test_run_resumes_where_it_stopped(tmp_path):
    """gpu_tests --resume: what passed or was skipped is deselected, a failure runs again, and the summary
    counts each test once (by the later run where it ran again)."""
    import json

    from benchmarks.gpu_tests import summarise_jsonl

    root = pathlib.Path(__file__).resolve().parents[1]
    ids = ["tests/test_import.py::test_import_prints_nothing_and_stays_offline",
           "tests/test_import.py::test_the_guard_can_fail"]
    earlier = [{"test": ids[0], "when": "call", "outcome": "passed", "seconds": 1.0},
               {"test": ids[1], "when": "call", "outcome": "failed", "seconds": 2.0, "report": "E"}]
    log = tmp_path / "earlier.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in earlier))
    out = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-q",
                          "--collect-only", "tests/test_import.py"], cwd=root, capture_output=True, text=True,
                         env={**__import__("os").environ, "SSM_EDU_TEST_SKIP": str(log)})
    assert ids[0] not in out.stdout and ids[1] in out.stdout and "1 deselected" in out.stdout, out.stdout[-800:]
    both = tmp_path / "tests.jsonl"  # the earlier lines, then the failed test passing when run again
    both.write_text(log.read_text() + json.dumps({"test": ids[1], "when": "call", "outcome": "passed",
                                                  "seconds": 3.0}) + "\n")
    table, failures = summarise_jsonl(both, n_earlier=2)
    assert failures == [] and table[1].split()[:5] == ["test_import.py", "2", "0", "0", "0"], table
    table, failures = summarise_jsonl(both, n_earlier=3)  # all earlier: the failure stands
    assert failures == [ids[1]] and table[1].split()[:3] == ["test_import.py", "1", "1"], table


def test_the_gpu_phase_starts_the_heavy_tests(monkeypatch):
    """With SSM_EDU_HEAVY_FIRST (gpu_tests.py sets it) tests/conftest.py puts the tests marked heavy first, after
    a book build; without it (make test) only the book builds move."""
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("_tests_conftest", pathlib.Path(__file__).with_name("conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    marks = {"a": (), "b": ("heavy",), "c": (), "d": ("book",), "e": ("heavy",)}
    def items():
        return [types.SimpleNamespace(nodeid=n, get_closest_marker=lambda m, n=n: m in marks[n] or None) for n in marks]
    monkeypatch.delenv("SSM_EDU_TEST_SKIP", raising=False)
    for flag, order in (("1", "dbeac"), ("", "dabce")):
        monkeypatch.setenv("SSM_EDU_HEAVY_FIRST", flag)
        got = items()
        conftest.pytest_collection_modifyitems(None, got)
        assert "".join(i.nodeid for i in got) == order, flag


def test_merge_of_a_run_cut_inside_an_operation(tmp_path):
    """A run stopped while timing an operation replaces only the rows it re-measured; a complete operation's
    rows replace all of that operation's earlier rows."""
    from benchmarks.suite import merge

    def row(op, impl, pass_="fwd", us=1.0):
        return {"op": op, "impl": impl, "pass": pass_, "shape": "S", "median_us": us}

    head = {"device": "GPU X", "torch": "t", "triton": "tr", "date": "d0", "hbm_tb_s": 3.0}
    path = tmp_path / "gpu.json"
    merge(head | {"results": [row("a", "ours"), row("a", "peer"), row("a", "ours", "fwd+bwd"), row("b", "ours")]},
          path)
    cut = tmp_path / "cut.json"  # the suite's own file, written after a row of "a" and before the others
    merge(head | {"date": "d1", "results": [row("a", "ours", us=2.0)], "incomplete_ops": ["a"]}, cut,
          mark_incomplete=True)
    doc = json.loads(cut.read_text())
    assert doc["incomplete_ops"] == ["a"]
    merge(doc, path)
    rows = {(r["op"], r["impl"], r["pass"]): (r["median_us"], r["date"]) for r in
            json.loads(path.read_text())["results"]}
    assert rows == {("a", "ours", "fwd"): (2.0, "d1"), ("a", "peer", "fwd"): (1.0, "d0"),
                    ("a", "ours", "fwd+bwd"): (1.0, "d0"), ("b", "ours", "fwd"): (1.0, "d0")}
    merge(head | {"date": "d2", "results": [row("a", "ours", us=3.0)]}, path)  # "a" complete: its other rows go
    rows = [(r["op"], r["impl"], r["pass"]) for r in json.loads(path.read_text())["results"]]
    assert sorted(rows) == [("a", "ours", "fwd"), ("b", "ours", "fwd")]
    assert "incomplete_ops" not in json.loads(path.read_text())


def test_profile_script_tables_a_case(tmp_path, capsys):
    """benchmarks/profile_ops.py: one table per closure, its rows sorted by time; an unknown case is refused by
    name. On a CPU at tiny shapes (the interpreter): a check that the script works, not a measurement."""
    from benchmarks import profile_ops

    out = profile_ops.main(["selective", "--top", "2", "--json", str(tmp_path / "p.json")])
    labels = [c["label"] for c in out["cases"]]
    assert labels == ["selective fwd", "selective fwd+bwd"]
    for case in out["cases"]:
        times = [r["us"] for r in case["rows"]]
        assert times and times == sorted(times, reverse=True) and case["total_us"] > 0
    assert json.loads((tmp_path / "p.json").read_text())["cases"][1]["label"] == "selective fwd+bwd"
    assert "=== selective fwd+bwd" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        profile_ops.main(["spiral"])
    assert "unknown case(s) spiral" in capsys.readouterr().err


def test_gpu_tests_asks_for_short_schedule_chunks_only_where_xdist_has_them(monkeypatch):
    """pytest-xdist gained --maxschedchunk in 3.2; an older one refuses the whole command, so none is passed."""
    import importlib.metadata

    from benchmarks.gpu_tests import _schedule_chunk

    for installed, expected in (("3.8.0", ["--maxschedchunk", "2"]), ("3.2.1", ["--maxschedchunk", "2"]),
                                ("3.1.0", []), ("2.5.0", [])):
        monkeypatch.setattr(importlib.metadata, "version", lambda name, v=installed: v)
        assert _schedule_chunk(2) == expected, installed


def test_mamba3_sweep_writes_the_log_chapter_9_reads(tmp_path):
    """benchmarks/sweep_mamba3.py, a dry run on the CPU (SWEEP_SMALL, the interpreter, one variant): with OUT set it
    writes sweep_mamba3-<gpu>.json with the fields that chapter 9 reads through ``results.newest_log``, marked as
    a dry run so that the chapter never quotes it; the committed H100 log has what the chapter quotes."""
    import os

    from ssm_edu import results
    from ssm_edu.mamba3 import sweep_log

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "SWEEP_SMALL": "1", "TRITON_INTERPRET": "1", "OUT": str(tmp_path)}
    script = root / "benchmarks" / "sweep_mamba3.py"
    out = subprocess.run([sys.executable, str(script), "fwd through SSD, fused rotation"],
                         cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    doc = json.loads((tmp_path / "sweep_mamba3-cpu-dry-run.json").read_text())
    assert doc["dry_run"] is True and {"device", "torch", "triton", "date", "shape", "dtype"} <= set(doc)
    assert [r["label"] for r in doc["results"]] == ["fwd through SSD, fused rotation",
                                                    "fwd through SSD, fused rotation, gate"]
    assert all(r["status"] == "ok" and r["us"] > 0 for r in doc["results"])
    assert results.newest_log(tmp_path, "sweep_mamba3-*.json", lambda d: not d.get("dry_run")) is None
    log = sweep_log()
    quoted = {"fwd through SSD, fused rotation", "fwd through SSD", "fwd through SSD, tiles rotation",
              "fwd+bwd through SSD, fused rotation", "fwd+bwd through SSD"}
    assert log is not None and quoted <= {r["label"] for r in log["results"] if r and r.get("us")}
