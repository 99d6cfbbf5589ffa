"""ssm_edu.distributed: sequence parallelism, DDP and FSDP2 steps, communication counts, on 2 and 4 gloo processes.

The processes are started by ``run_ranks`` (a forkserver that has imported
torch once, a FileStore in a fresh temporary directory, a timeout on every
process group and join), so each multi-process test costs a fork and a few
small tensors. Checks run in float64 so that the distributed and the
single-process results must agree to rounding; one float32 run checks
API.md's tolerance.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch

from ssm_edu import ssd
from ssm_edu.distributed import _sp_problem  # the problem the multi-process checks use
from ssm_edu.distributed import (check_sequence_parallel, check_training_step, ddp_bytes, exchange_states, fsdp_bytes,
                                 rank_environment, rank_state_scan, run_ranks, ssd_sequence_parallel, ssd_sliced,
                                 split_lengths, start_forkserver)
from ssm_edu.lm import SequenceModel
from ssm_edu.mamba2 import mamba2_block
from ssm_edu.numerics import rel_error
from ssm_edu.ssd import ssd_state_passing

TIMEOUT = 60  # seconds for any one run_ranks call; the whole file takes about 10 s


def _ssd_problem(L):
    """Random ssd inputs (float64) with every optional argument: batch 2, H 4, P 3, N 5, G 2."""
    return _sp_problem("ssd", L, 0, torch.float64)[0]


# ---------------------------------------------------------------------- one process: the mathematics


def test_rank_scan_is_chapter_8_state_passing():
    """The scan over ranks is ssd_state_passing with one chunk per rank."""
    g = torch.Generator().manual_seed(0)
    S = torch.randn(2, 5, 4, 3, 6, generator=g, dtype=torch.float64)  # (b, R, H, P, N)
    a = -torch.rand(2, 4, 5, generator=g, dtype=torch.float64)  # (b, H, R)
    h0 = torch.randn(2, 4, 3, 6, generator=g, dtype=torch.float64)
    h_in, final = rank_state_scan(list(S.unbind(1)), [t[..., None, None] for t in a.unbind(-1)], h0)
    ref_in, ref_final = ssd_state_passing(S, a, h0)
    assert rel_error(h_in.transpose(0, 1), ref_in) < 1e-14
    assert rel_error(final, ref_final) < 1e-14


@pytest.mark.parametrize("lengths", [(37,), (18, 19), (1, 20, 3, 13), (9, 1)], ids=str)
def test_sliced_equals_whole(lengths):
    """Slices from zero states, the scan over slices and the finishing step equal ssd on the whole sequence."""
    kw = _ssd_problem(sum(lengths))
    y, final = ssd(**kw, chunk_size=8, dt_softplus=True, return_final_states=True)
    y_s, final_s = ssd_sliced(**kw, lengths=lengths, chunk_size=8, dt_softplus=True, return_final_states=True)
    assert rel_error(y_s, y) < 1e-13
    assert rel_error(final_s, final) < 1e-13


def test_split_lengths():
    assert split_lengths(37, 4) == [10, 9, 9, 9]
    assert split_lengths(4, 4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="world"):
        split_lengths(3, 4)


def test_bad_input():
    kw = _ssd_problem(8)
    with pytest.raises(ValueError, match="exchange must be one of"):
        ssd_sequence_parallel(**kw, exchange="ring")
    with pytest.raises(ValueError, match="exchange must be one of"):
        exchange_states(kw["initial_states"], kw["A"], exchange="tree")
    with pytest.raises(ValueError, match="lengths"):
        ssd_sliced(**kw, lengths=(3, 4))
    with pytest.raises(RuntimeError, match="process group"):
        ssd_sequence_parallel(**kw)


# ---------------------------------------------------------------------- several processes


def _assert_small(results, tol):
    for rank, res in enumerate(results):
        errors = {k: v for k, v in res.items() if "bytes" not in k}
        assert errors and max(errors.values()) < tol, (rank, errors)
        assert res["measured bytes"] == res["counted bytes"] > 0, (rank, res)


@pytest.mark.parametrize("world,lengths", [(2, None), (2, (5, 32)), (4, None), (4, (1, 20, 3, 13))], ids=str)
@pytest.mark.parametrize("exchange", ["chain", "allgather"])
@pytest.mark.parametrize("op", ["ssd", "selective_scan"])
def test_sequence_parallel_equals_single_device(op, exchange, world, lengths):
    """Values, final state and every gradient (sequence inputs per slice, shared parameters summed over ranks)."""
    results = run_ranks(check_sequence_parallel, world, op, exchange, lengths, timeout=TIMEOUT)
    _assert_small(results, 1e-13)
    assert "final state" in results[-1]


@pytest.mark.parametrize("exchange", ["chain", "allgather"])
def test_sequence_parallel_float32_tolerance(exchange):
    results = run_ranks(check_sequence_parallel, 4, "ssd", exchange, None, 37, 1, torch.float32, timeout=TIMEOUT)
    _assert_small(results, 1e-5)


@pytest.mark.parametrize("exchange", ["chain", "allgather"])
def test_sequence_parallel_expanded_gradients_three_ranks(exchange):
    """loss = y.sum(): the gradient reaching the exchange is expanded (stride 0); collectives need it contiguous."""
    results = run_ranks(check_sequence_parallel, 3, "ssd", exchange, None, 37, 2, torch.float64, True, timeout=TIMEOUT)
    _assert_small(results, 1e-13)


def test_chain_sends_one_state_per_neighbour():
    """The chain's inner ranks send two states (one forward, one backward); its ends send one."""
    results = run_ranks(check_sequence_parallel, 4, "ssd", "chain", timeout=TIMEOUT)
    sent = [r["measured bytes"] for r in results]
    state = 2 * 4 * 3 * 5 * 8  # (b, H, P, N) in float64
    assert sent == [state, 2 * state, 2 * state, state]


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_training_step_equals_single_process(mode, world):
    """One AdamW step of the Mamba-2 LM under DDP / FSDP2 equals the step on one process with the whole batch."""
    results = run_ranks(check_training_step, world, mode, timeout=TIMEOUT)
    _assert_small(results, 1e-12)


def test_fsdp_moves_one_and_a_half_times_ddp():
    """FSDP2 all-gathers the blocks twice and reduce-scatters once (3 (R-1)/R Ψ); DDP all-reduces once (2 (R-1)/R Ψ).

    Counted from the shapes; test_training_step_equals_single_process checks that a run moves exactly these bytes.
    """
    model = SequenceModel(64, 64, 4, mamba2_block(d_state=16, headdim=16))
    for world in (2, 4, 8):
        ratio = fsdp_bytes(model, world) / ddp_bytes(model, world)
        assert 1.4 < ratio < 1.5, (world, ratio)  # the root (embedding, norms) is gathered once, not twice
        assert fsdp_bytes(model, world, reshard_after_forward=False) / ddp_bytes(model, world) < 1.01


# ---------------------------------------------------------------------- the harness: CPU only, never hangs


def test_run_ranks_processes_see_no_gpu():
    """The processes run on CPU with gloo on any machine: the GPUs are hidden before the forkserver starts.

    On a GPU machine, a process forked from one that had called torch.cuda.is_available() (as importing
    ssm_edu does) fails in AdamW's step or FSDP2's set-up with "CUDA error: initialization error".
    This machine's own environment is left as it was.
    """
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    results = run_ranks(rank_environment, 2, timeout=TIMEOUT)
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        assert r["backend"] == "gloo" and r["world"] == 2, r
        assert r["CUDA_VISIBLE_DEVICES"] == "" and not r["cuda available"] and r["default device"] == "cpu", r
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before


def test_a_forkserver_started_elsewhere_is_not_used(monkeypatch):
    """A forkserver this module did not start (GPUs perhaps visible, other imports) is left alone: run_ranks spawns."""
    from multiprocessing import forkserver

    assert start_forkserver()  # this module's own (run_ranks uses it)
    monkeypatch.setattr(forkserver._forkserver, "_forkserver_pid", -1)  # as if another one were running
    assert not start_forkserver()
    monkeypatch.undo()
    assert start_forkserver()


def test_run_ranks_times_out():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish"):
        run_ranks(time.sleep, 2, 60, timeout=2)
    assert time.monotonic() - start < 15


def test_failed_meetings_start_again_and_errors_of_fn_do_not():
    """run_ranks's retry (``_retry_meetings``): a start whose ranks could not join the process group (their
    ``<rank>.meeting`` files) runs again in a fresh directory, with a warning; any other error is raised at once;
    a meeting that keeps failing is raised after MEETING_TRIES starts."""
    from ssm_edu.distributed import MEETING_TRIES, _retry_meetings

    calls = []

    def flaky(tmp):
        calls.append(tmp)
        if len(calls) == 1:
            open(os.path.join(tmp, "1.meeting"), "w").close()
            raise RuntimeError("Gloo connectFullMesh failed")
        return ["rank 0", "rank 1"]

    with pytest.warns(RuntimeWarning, match="failed to meet"):
        assert _retry_meetings(flaky) == ["rank 0", "rank 1"]
    assert len(calls) == 2 and calls[0] != calls[1]

    def broken(tmp):  # fn's own error: no meeting file
        calls.append(tmp)
        raise ValueError("math domain error")

    calls.clear()
    with pytest.raises(ValueError):
        _retry_meetings(broken)
    assert len(calls) == 1

    def never(tmp):
        calls.append(tmp)
        open(os.path.join(tmp, "0.meeting"), "w").close()
        raise RuntimeError("Gloo connectFullMesh failed")

    calls.clear()
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="connectFullMesh"):
        _retry_meetings(never)
    assert len(calls) == MEETING_TRIES


def test_run_ranks_reraises_a_rank_error():
    with pytest.raises(Exception, match="math domain error"):
        run_ranks(__import__("math").sqrt, 2, -1.0, timeout=TIMEOUT)


# ---------------------------------------------------------------------- the torchrun script


@pytest.mark.heavy  # 88 s in the GPU test phase of 2026-12-07: started first there
def test_torchrun_script_trains_and_logs(tmp_path):
    """benchmarks/train_distributed.py under torchrun (2 gloo processes, 2 FSDP2 steps): it writes the JSON log."""
    root = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "fsdp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(root / "benchmarks" / "train_distributed.py"), "--mode", "fsdp", "--size", "cpu", "--steps", "2",
           "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo, even beside one GPU
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    log = json.loads(out.read_text())
    assert log["mode"] == "fsdp" and log["world"] == 2 and log["backend"] == "gloo" and len(log["steps"]) == 2
    assert log["bytes_sent_per_rank"]["measured"] == [log["bytes_sent_per_rank"]["counted"]] * 2
    assert all(s["loss"] > 0 and s["tokens_per_s"] > 0 for s in log["steps"])
