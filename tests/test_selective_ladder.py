"""Chapter 7's ladder data (ssm_edu.selective.ladder): the compile table and a sweep log merged rung by rung.
The logs here are made-up fixtures with the sweep's fields, never book data, except in the last test, which reads
the committed GPU log the chapter reads."""

import matplotlib

matplotlib.use("Agg")

from ssm_edu.selective import compile_table, ladder, plot_ladder, sweep_log  # noqa: E402


def fake_log(table):
    rows = [dict(label=r["label"], kind=r["kind"], shape="B8 D2048 L2048 N16", group="rung", rung=r["index"],
                 status="ok", median_us=1000.0 / (r["index"] + 1), floor_us=128.0,
                 fraction_of_floor=128.0 / (1000.0 / (r["index"] + 1))) for r in table["rungs"]]
    rows.append(dict(label="mamba_ssm CUDA", kind="cuda_fwd", shape="B8 D2048 L2048 N16", group="fwd", status="ok",
                     median_us=500.0))
    return dict(device="made-up GPU", torch="x", triton="y", date="2000-01-01", dry_run=False,
                goal_shape="B8 D2048 L2048 N16", rows=rows,
                rungs=[dict(index=r["index"], label=r["label"], kind=r["kind"], knobs=r["knobs"], change=r["change"],
                            reason=r["reason"]) for r in table["rungs"]])


def test_the_committed_compile_table_lists_every_rung():
    table = compile_table()
    assert table and table["target"] == "sm_90"
    rungs = ladder(log={}, table=table)
    assert [r["index"] for r in rungs] == list(range(len(table["rungs"])))
    assert rungs[0]["label"] == "first kernel" and all(r["regs"] and r["instr_per_el"] > 0 for r in rungs)
    assert all(r["median_us"] is None for r in rungs)  # nothing measured without a log


def test_a_log_fills_in_the_measured_times():
    table = compile_table()
    rungs = ladder(log=fake_log(table), table=table)
    assert [r["median_us"] for r in rungs] == [1000.0 / (i + 1) for i in range(len(rungs))]
    assert all(r["regs"] for r in rungs)  # and the compiled counts stay
    ax = plot_ladder(rungs, floor_us=128.0, peer_us=500.0)
    assert len(ax.patches) == len(rungs)


def test_dry_runs_are_never_read_as_data(tmp_path, monkeypatch):
    import json

    import ssm_edu.selective as sel

    monkeypatch.setattr(sel, "_LOGS", tmp_path)
    (tmp_path / "sweep_selective-dry-run.json").write_text(json.dumps(dict(dry_run=True, rows=[])))
    assert sweep_log() is None
    (tmp_path / "sweep_selective-gpu.json").write_text(json.dumps(dict(dry_run=False, rows=[], date="2000")))
    assert sweep_log() == dict(dry_run=False, rows=[], date="2000")


def test_the_backward_timing_log_skips_dry_runs_and_keys_its_rows(tmp_path, monkeypatch):
    import json

    import ssm_edu.selective as sel

    monkeypatch.setattr(sel, "_LOGS", tmp_path)
    row = dict(shape="S", knobs=dict(tn=4, num_warps=1), bwd_us=1.0, fwd_ck_us=2.0, status="ok")
    (tmp_path / "time_selective_bwd-dry.json").write_text(json.dumps(dict(device="cpu (dry run)", rows=[row])))
    assert sel.bwd_timing_log() is None
    (tmp_path / "time_selective_bwd-gpu.json").write_text(json.dumps(dict(device="GPU X", date="2000", rows=[row])))
    log = sel.bwd_timing_log()
    assert log["device"] == "GPU X" and log["configs"] == {("S", 4, 1): row}
    assert sel.bwd_timing_log("GPU Y") is None


def test_the_committed_gpu_log_times_every_rung_and_the_peer():
    """Chapter 7 reads the newest GPU log: every rung measured at its goal shape, with the fraction of the floor,
    the rung the log calls the default among them, and mamba_ssm's CUDA kernel at the same shape."""
    import pytest

    log = sweep_log()
    if log is None:
        pytest.skip("no GPU log of benchmarks/sweep_selective.py in this copy")
    assert log["device"] and log["torch"] and log["triton"] and log["date"] and log["goal_shape"]
    rungs = ladder(log)
    assert [r["index"] for r in rungs] == list(range(len(log["rungs"]))) and rungs[0]["label"] == "first kernel"
    assert all(r["median_us"] and r["fraction_of_floor"] and r["floor_us"] for r in rungs)
    assert sum("the default" in r["change"] for r in rungs) == 1
    goal = [r for r in log["rows"] if r["shape"] == log["goal_shape"] and r.get("median_us")]
    assert [r for r in goal if r["kind"] == "cuda_fwd"]
