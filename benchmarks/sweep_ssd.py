"""SSD (Mamba-2) on a GPU: the ladder from the first kernel to the library's, and forward plus backward.

    python benchmarks/sweep_ssd.py            about 60-90 s on an H100 (compiles included)
    SSD_DRY=1 python benchmarks/sweep_ssd.py  a dry run on a CPU: Triton's interpreter, a tiny shape
    python benchmarks/sweep_ssd.py --compile  no GPU: compile every kernel for sm_90, print registers,
                                              spills, shared memory and the SASS main loop's
                                              instructions, LDL/STL and HGMMA
    python benchmarks/sweep_ssd.py --compile-one-head   no GPU: the backward's chunk kernel at Mamba-3's
                                              path shape, 1, 2, 4, 8 chunks per program x 1-3 stages

Shape B4 L4096 H128 P64 N128 G1 (chapter 8's goal), bf16 x, B, C; float32 dt, A, D as Mamba2 passes
them (benchmarks/ssd.py's ``ssd_inputs``); chunk 64. Entries, in order of priority:

- ladder: the forward rungs of kernels/ssd_ladder.py (Δ as given, no options), each checked against
  ``ssd(impl="vectorized")`` in float32 on the same inputs (relative error < 2e-2), then timed;
- fwd+bwd: ``ssd(impl="triton")`` forward and backward, gradients of x, dt, A, B, C, D checked
  against the vectorized form's in float32 (each error in the log; wrong above 0.1, as the suite's
  check allows 10 times the bf16 tolerance); the backward alone, and its kernels one by one
  (``ssd_bwd``'s ``stop_after``); the backward's knobs, among them ``dxb_apart`` (the input side without
  its spill: ``SSD_ONLY="dxb apart,default,backward alone,walks + output side" SSD_BUDGET=300``, which
  also runs "one head: dxb apart");
- forward knobs: ``ssd_fwd``'s chunk length, P block and warps;
- peers: mamba_ssm's ``mamba_chunk_scan_combined`` (chunk 256) forward and fwd+bwd, when
  ``benchmarks/peers.py`` finds it (its autotuning compiles last);
- one head: the backward's chunk kernel alone (both sides) at B4 L4096 H32 P64 N128 G32, one group per
  head as Mamba-3's path has it, called as kernels/mamba3_ssd.py calls ``ssd_bwd`` (D, ``turns``,
  ``ddt_decay_only``), for 1, 2, 4, 8 chunks per program (1: one program per chunk, as before runs),
  8 with 2 and 3 stages, the launcher's choice, and it with ``dxb_apart``. Its time is that of
  ``ssd_bwd(stop_after="side2")`` less ``stop_after="dstates"`` (the walks), with the output side's (``side1``)
  logged apart; its floor,
  the bytes the two sides move (``one_head_bytes``). Checked first: the plain call's gradients against
  the vectorized form's in float32, and the path's (dB and dC summed from their parts) against those.
  Last in the list: ``SSD_ONLY="one head" SSD_BUDGET=300`` runs them.

Timing: ``triton.testing.do_bench`` (warmup 25 ms, rep 100 ms, median). The floors are
benchmarks/ssd.py's ``ssd_floor`` at the bandwidth measured by the suite's ``Context``.

Robustness: the entries run in a worker subprocess. An entry that raises, or whose result is
wrong, is reported and skipped. A worker that dies (an illegal memory access poisons its CUDA
context) takes only the entry it was running with it: the parent reports that one as crashed and
starts a new worker at the next entry. Entries that would start after SSD_BUDGET seconds (default
90) are skipped, and one still running 30 s later is killed. SSD_ONLY=a,b keeps the entries whose name contains a or b; SSD_CRASH=name makes the
worker die in that entry (to test this).

Output: one line per entry as it finishes, a table last, and the log as JSON in
``$OUT/sweep_ssd.json`` when OUT is set, else ``book/data/benchmarks/logs/sweep_ssd-<gpu>.json``,
which chapter 8 reads (``ssm_edu.ssd.ssd_ladder_log``). A dry run writes the tests' fixture
``tests/data/sweep_ssd_dry.json`` instead: interpreter timings are not measurements.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DRY = os.environ.get("SSD_DRY") == "1"
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"
if "--compile" in sys.argv or "--compile-one-head" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "0"  # before the kernels are imported: compile, never interpret

SHAPE = dict(b=1, L=80, h=2, p=16, n=16, g=1) if DRY else dict(b=4, L=4096, h=128, p=64, n=128, g=1)
SHAPE_NAME = "B{b} L{L} H{h} P{p} N{n} G{g}".format(**SHAPE)
# Mamba-3's path through SSD's kernels (kernels/mamba3_ssd.py): one group per head, so that each program of the
# backward's chunk kernel has one head
ONE_HEAD = dict(b=1, L=80, h=2, p=16, n=16, g=2) if DRY else dict(b=4, L=4096, h=32, p=64, n=128, g=32)
ONE_HEAD_NAME = "B{b} L{L} H{h} P{p} N{n} G{g}".format(**ONE_HEAD)
BUDGET = float(os.environ.get("SSD_BUDGET", "90"))


# --------------------------------------------------------------------------- the entries


def entries():
    """(group, name, what it is, knobs) in order of priority; the worker turns each into a run."""
    from ssm_edu.kernels.ssd_ladder import RUNGS

    out = [("ladder", name, f"{change} ({reason})", dict(rung=i))
           for i, (name, change, reason, _, _) in enumerate(RUNGS)]
    out += [
        ("fwd+bwd", "default", "ssd(impl='triton'), forward and backward", {}),
        ("backward", "backward alone", "ssd_bwd with the default launch", dict(bwd={})),
        ("backward", "walks", "the forward walk (chunk states) and the reverse walk (their gradients)",
         dict(bwd=dict(stop_after="dstates"))),
        ("backward", "walks + output side", "... and the chunk kernel's output side",
         dict(bwd=dict(stop_after="side1"))),
        ("backward", "backward, dxb apart", "ssd_bwd, the input side's two parts of dL/dX̄ apart (dxb_apart)",
         dict(bwd=dict(dxb_apart=True))),
        ("fwd+bwd", "sides fused", "the chunk kernel's two sides in one launch", dict(knobs=dict(sides="fused"))),
        ("fwd+bwd", "1 stage", "no software pipelining of the chunk kernel's head loop",
         dict(knobs=dict(num_stages=1))),
        ("fwd+bwd", "P blocks of 64", "the input side on whole heads (spills)", dict(knobs=dict(block_p=64))),
        ("fwd+bwd", "dxb apart", "the input side's two parts of dL/dX̄ apart: no spill in its head loop",
         dict(knobs=dict(dxb_apart=True))),
        ("fwd+bwd", "dxb apart 3 stages", "... and 3 pipeline stages on the input side (the output side's)",
         dict(knobs=dict(dxb_apart=True, num_stages=3))),
        ("fwd+bwd", "n_split 1", "every head of a group in one program", dict(knobs=dict(n_split=1))),
        ("fwd+bwd", "n_split 4", "the heads of a group over 4 programs", dict(knobs=dict(n_split=4))),
        ("fwd+bwd", "Q 32", "backward chunks of 32 (twice the state traffic)", dict(knobs=dict(block_q=32))),
        ("forward", "Q 32", "ssd_fwd with chunks of 32", dict(fwd=dict(block_q=32))),
        ("forward", "P blocks of 32", "ssd_fwd with two programs per head", dict(fwd=dict(block_p=32))),
        ("forward", "8 warps", "ssd_fwd with 8 warps", dict(fwd=dict(num_warps=8))),
        ("peer", "mamba_ssm fwd", "mamba_chunk_scan_combined, chunk 256", dict(peer="fwd")),
        ("peer", "mamba_ssm fwd+bwd", "mamba_chunk_scan_combined, chunk 256", dict(peer="fwd+bwd")),
    ]
    # the backward's chunk kernel where each program has one head (ONE_HEAD: G = H, Mamba-3's path), timed
    # alone: runs of chunks per program (1: the launch before runs), and the pipeline's stages
    runs = [(f"one head: {k} chunk{'s' * (k > 1)}", dict(chunks_per_program=k)) for k in (1, 2, 4, 8)]
    runs += [(f"one head: 8 chunks {n} stages", dict(chunks_per_program=8, num_stages=n)) for n in (2, 3)]
    runs += [("one head: launcher's choice", {}), ("one head: dxb apart", dict(dxb_apart=True))]
    out += [("one head", name, "_ssd_bwd_chunk (both sides) at {}, chunks_per_program={}".format(
        ONE_HEAD_NAME, knobs.get("chunks_per_program", "None")), dict(one_head=knobs)) for name, knobs in runs]
    only = os.environ.get("SSD_ONLY")
    if only:
        out = [e for e in out if any(s in e[1] for s in only.split(","))]
    return out


class Setup:
    """Inputs, references and the timer, built once per worker."""

    def __init__(self):
        import torch

        import ssm_edu
        import benchmarks.suite  # noqa: F401  (first: it imports the per-operation modules in order)
        from benchmarks.ssd import ssd_floor, ssd_inputs

        self.torch, self.ssm_edu = torch, ssm_edu
        dev = "cpu" if DRY else "cuda"
        if DRY:
            self.ctx = type("Ctx", (), {"device": torch.device("cpu")})()
            self.floor = {"fwd": None, "fwd+bwd": None}
            self.hbm = None
        else:
            from benchmarks.suite import Context

            self.ctx = Context()
            self.hbm = self.ctx.hbm_bytes_s / 1e12
            s = SHAPE
            self.floor = {p: ssd_floor(self.ctx, s["b"], s["L"], s["h"], s["p"], s["n"], s["g"], torch.bfloat16, p)
                          for p in ("fwd", "fwd+bwd")}
        s = SHAPE
        self.x, self.dt, self.A, self.B, self.C, self.D = ssd_inputs(self.ctx, s["b"], s["L"], s["h"], s["p"],
                                                                     s["n"], s["g"], torch.bfloat16)
        self.dev = dev
        f32 = [t.float() for t in (self.x, self.dt, self.A, self.B, self.C)]
        with torch.no_grad():
            self.ref_fwd = ssm_edu.ssd(*f32, impl="vectorized")  # the ladder: Δ = dt as given, no options
        gen = torch.Generator(device=dev).manual_seed(7)
        self.gy = torch.randn(self.x.shape, device=dev, generator=gen).to(torch.bfloat16)
        self._ref_grads = None

    def ref_grads(self):
        """Gradients of the vectorized form in float32 on the same inputs (computed once, on demand)."""
        if self._ref_grads is None:
            torch = self.torch
            leaves = [t.float().requires_grad_() for t in (self.x, self.dt, self.A, self.B, self.C, self.D)]
            y = self.ssm_edu.ssd(*leaves[:5], D=leaves[5], impl="vectorized")
            y.backward(self.gy.float())
            self._ref_grads = [t.grad for t in leaves]
            if not DRY:
                torch.cuda.empty_cache()
        return self._ref_grads

    def one_head(self):
        """ONE_HEAD's inputs (x, dt, A, B, C, D), dy and the vectorized form's gradients in float32 (once)."""
        if getattr(self, "_one_head", None) is None:
            from benchmarks.ssd import ssd_inputs

            torch = self.torch
            s = ONE_HEAD
            args = ssd_inputs(self.ctx, s["b"], s["L"], s["h"], s["p"], s["n"], s["g"], torch.bfloat16)
            gen = torch.Generator(device=self.dev).manual_seed(8)
            gy = torch.randn(args[0].shape, device=self.dev, generator=gen).to(torch.bfloat16)
            leaves = [t.float().requires_grad_() for t in args]
            self.ssm_edu.ssd(*leaves[:5], D=leaves[5], impl="vectorized").backward(gy.float())
            self._one_head = (args, gy, [t.grad for t in leaves])
            del leaves
            if not DRY:
                torch.cuda.empty_cache()
                self.floor["chunk kernel"] = one_head_bytes(**s) / (self.hbm * 1e6)
        return self._one_head

    def time_us(self, fn):
        if DRY:
            t = time.perf_counter()
            fn()
            return 1e6 * (time.perf_counter() - t)
        return self.ctx.time_us(fn)


def _leaves(st):
    return [t.detach().clone().requires_grad_() for t in (st.x, st.dt, st.A, st.B, st.C, st.D)]


def run_entry(st, group, name, knobs):
    """Check, then time, one entry: returns (median µs, relative error, pass)."""
    torch, ssm_edu = st.torch, st.ssm_edu
    from ssm_edu.kernels import ssd as kernel

    tol = ssm_edu.tolerance(torch.bfloat16)
    grad_tol = 5 * tol  # bf16 gradients that are sums over L (dA) sit nearer 2e-2 than outputs do
    names = ("dx", "ddt", "dA", "dB", "dC", "dD")
    args = (st.x, st.dt, st.A, st.B, st.C)
    if "rung" in knobs or "fwd" in knobs:
        if "rung" in knobs:
            from ssm_edu.kernels.ssd_ladder import RUNGS

            fn = functools.partial(RUNGS[knobs["rung"]][3], *args)
        else:
            fn = functools.partial(lambda **k: kernel.ssd_fwd(*args, chunk_size=64, **k)[0], **knobs["fwd"])
        err = float(ssm_edu.rel_error(fn().float(), st.ref_fwd))
        return (st.time_us(fn) if err < tol else None), err, "fwd"
    if "peer" in knobs:
        from benchmarks import peers

        combined = peers.mamba_ssm("ops.triton.ssd_combined").mamba_chunk_scan_combined
        if knobs["peer"] == "fwd":
            fn = functools.partial(combined, *args, 256, D=st.D)
            err = float(ssm_edu.rel_error(fn().float(), st.ref_fwd + (st.D[:, None] * st.x.float())))
            return st.time_us(fn), err, "fwd"
        leaves = _leaves(st)

        def fb():
            for t in leaves:
                t.grad = None
            combined(*leaves[:5], 256, D=leaves[5]).backward(st.gy)

        fb()
        errs = {n: float(ssm_edu.rel_error(t.grad.float(), r)) for n, t, r in zip(names, leaves, st.ref_grads())}
        return st.time_us(fb), errs, "fwd+bwd"
    if "one_head" in knobs:
        return _one_head_entry(st, knobs["one_head"], names, grad_tol)
    if "bwd" in knobs:  # the backward alone (or its first kernels): checked through the full run
        gy = st.gy
        fn = functools.partial(kernel.ssd_bwd, gy, None, *args, 64, D=st.D, **knobs["bwd"])
        out = fn()
        errs = {} if out is None else {k: float(ssm_edu.rel_error(out[k].float(), r))
                                       for k, r in zip(names, st.ref_grads())}
        return (st.time_us(fn) if max(errs.values(), default=0.0) < grad_tol else None), errs, "bwd"
    plain = kernel.ssd_bwd
    kernel.ssd_bwd = functools.partial(plain, **knobs.get("knobs", {}))
    try:
        leaves = _leaves(st)

        def fb():
            for t in leaves:
                t.grad = None
            ssm_edu.ssd(*leaves[:5], D=leaves[5], impl="triton").backward(st.gy)

        fb()
        errs = {n: float(ssm_edu.rel_error(t.grad.float(), r)) for n, t, r in zip(names, leaves, st.ref_grads())}
        return (st.time_us(fb) if max(errs.values()) < grad_tol else None), errs, "fwd+bwd"
    finally:
        kernel.ssd_bwd = plain


def one_head_bytes(b, L, h, p, n, g, e=2, Q=64, block_p=32):
    """Bytes the backward's chunk kernel moves through DRAM (both sides, each tile once) for x, B, C of e bytes:
    the input side's blocks of block_p head dims after the first find B and C in L2."""
    x = b * L * h * p * e  # x, dy, dx: each
    bc = b * L * g * n * e  # B, C: each
    states = b * -(-L // Q) * h * p * n * e  # S_{k-1} and dS_k: each
    part = b * L * g * n * 4  # one float32 part of dB or dC
    step = b * L * h * 4  # Δ, one float32 part of ddt
    blocks = -(-p // block_p)  # the input side's blocks of head dims
    return (2 * 2 * x + x  # x and dy read by each side, dx written
            + 2 * 2 * bc  # B and C read by each side
            + 2 * states  # S_{k-1} by the output side, dS_k by the input side
            + (1 + blocks + 1) * part  # dB's parts (the output side's, one per input block) and dC's
            + 2 * step + (1 + blocks) * step)  # Δ read by each side; ddt's parts


def _one_head_entry(st, knobs, names, grad_tol):
    """ONE_HEAD's chunk kernel (both sides) timed alone as Mamba-3's path calls ssd_bwd, after two checks: the
    plain call's gradients against the vectorized form's, the path's (dB, dC summed from their parts) too."""
    ssm_edu = st.ssm_edu
    from ssm_edu.kernels import ssd as kernel

    args, gy, ref = st.one_head()
    kernel.CHUNK_RUNS = True  # {}: the launcher's rule, which ssd_bwd applies only with CHUNK_RUNS on
    kw = dict(D=args[5], **knobs)
    out = kernel.ssd_bwd(gy, None, *args[:5], 64, **kw)
    errs = {k: float(ssm_edu.rel_error(out[k].float(), r)) for k, r in zip(names, ref)}
    path = dict(kw, ddt_decay_only=True, turns=True)
    g = kernel.ssd_bwd(gy, None, *args[:5], 64, **path)
    for k, t in (("dx", g["dx"]), ("dA", g["dA"]), ("dD", g["dD"]), ("dB", g["dB_parts"].sum(2)),
                 ("dC", g["dC_parts"].sum(2))):
        errs[f"path {k}"] = float(ssm_edu.rel_error(t.float(), ref[names.index(k)]))
    del out, g
    if max(errs.values()) >= grad_tol:
        return None, errs, "chunk kernel"
    t = {stop: st.time_us(functools.partial(kernel.ssd_bwd, gy, None, *args[:5], 64, stop_after=stop, **path))
         for stop in ("dstates", "side1", "side2")}
    extra = dict(walks_us=t["dstates"], side1_us=t["side1"] - t["dstates"], side2_us=t["side2"] - t["side1"])
    return t["side2"] - t["dstates"], errs, "chunk kernel", extra


def worker(start):
    """Run the entries from ``start`` on, one JSON line each (the parent reads them)."""
    st = Setup()
    for i, (group, name, what, knobs) in enumerate(entries()):
        if i < start:
            continue
        print(f"START {i}", flush=True)
        if os.environ.get("SSD_CRASH") == name:  # testing the script: the worker dies in this entry
            os._exit(3)
        row = dict(index=i, group=group, name=name, what=what, knobs={k: v for k, v in knobs.items() if k != "rung"})
        if "rung" in knobs:
            row["rung"] = knobs["rung"]
        try:
            us, err, pass_, *extra = run_entry(st, group, name, knobs)
            row.update(*extra)
            worst = max(err.values(), default=0.0) if isinstance(err, dict) else err
            row.update(median_us=us, rel_error=err, pass_=pass_, floor_us=st.floor.get(pass_),
                       status="ok" if us is not None else f"wrong (relative error {worst:.2g})")
            if isinstance(err, dict) and err:  # gradients: the largest error, named
                row["status"] += f" (largest gradient error {worst:.1e}, {max(err, key=err.get)})"
        except Exception as e:  # a compile error, a missing peer...: reported, the sweep goes on
            msg = str(e).strip().splitlines()
            row.update(median_us=None, status=f"failed: {type(e).__name__}: {msg[0][:200] if msg else ''}")
        print("RESULT " + json.dumps(row), flush=True)
    print("SETUP " + json.dumps(dict(hbm_tb_s=st.hbm, floor_us=st.floor)), flush=True)


# --------------------------------------------------------------------------- the parent


def sweep():
    import torch
    import triton

    t0 = time.time()
    todo = entries()
    rows, setup, start = {}, {}, 0
    env = dict(os.environ)
    while start < len(todo):
        if time.time() - t0 > BUDGET and not DRY:
            break
        proc = subprocess.Popen([sys.executable, __file__, "--worker", str(start)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        # a hard deadline: an entry still running 30 s past the budget (a long compile) is killed
        watchdog = threading.Timer(max(1.0, t0 + BUDGET + 30 - time.time()), proc.kill)
        watchdog.daemon = True
        if not DRY:
            watchdog.start()
        running = None
        for line in proc.stdout:
            if line.startswith("START "):
                running = int(line.split()[1])
                if time.time() - t0 > BUDGET and not DRY:
                    proc.kill()
                    break
            elif line.startswith("RESULT "):
                row = json.loads(line[7:])
                rows[row["index"]] = row
                _print_row(row, time.time() - t0)
                running = None
            elif line.startswith("SETUP "):
                setup = json.loads(line[6:])
        proc.wait()
        watchdog.cancel()
        err = proc.stderr.read()
        if running is None and proc.returncode and not rows:  # the set-up itself failed: say why and stop
            print(f"the worker failed before its first entry (exit {proc.returncode}):\n{err[-2000:]}", flush=True)
            break
        if running is None:
            break
        group, name, what, _ = todo[running]  # the worker died in this entry: report it, go on after it
        tail = " | ".join(err.strip().splitlines()[-3:])[-300:]
        late = time.time() - t0 > BUDGET and not DRY
        why = f"killed at the time limit ({BUDGET:.0f} + 30 s)" if late else f"crashed (worker exit {proc.returncode})"
        rows[running] = dict(index=running, group=group, name=name, what=what, median_us=None,
                             status=f"{why}: {tail}")
        _print_row(rows[running], time.time() - t0)
        if late:
            break
        start = running + 1
    for i, (group, name, what, _) in enumerate(todo):
        rows.setdefault(i, dict(index=i, group=group, name=name, what=what, median_us=None,
                                status=f"skipped (time budget {BUDGET:.0f} s)"))
    device = "cpu (Triton interpreter)" if DRY else torch.cuda.get_device_name()
    log = dict(device=device, dry=DRY, date=datetime.date.today().isoformat(), torch=torch.__version__,
               triton=triton.__version__, shape=SHAPE_NAME, dtype="bf16", chunk=64, **setup,
               seconds=round(time.time() - t0, 1), entries=[rows[i] for i in sorted(rows)])
    path = _log_path(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(log, indent=1) + "\n")
    _table(log)
    print(f"log written to {path} ({log['seconds']:.0f} s)")
    return log


def _log_path(device):
    if os.environ.get("OUT"):
        return pathlib.Path(os.environ["OUT"]) / "sweep_ssd.json"
    if DRY:  # interpreter timings are no measurement: the dry log is the tests' fixture, never book data
        return ROOT / "tests" / "data" / "sweep_ssd_dry.json"
    from benchmarks.suite import gpu_slug

    return ROOT / "book" / "data" / "benchmarks" / "logs" / f"sweep_ssd-{gpu_slug(device)}.json"


def _print_row(row, elapsed):
    t = f"{row['median_us']:10.1f} us" if row.get("median_us") is not None else " " * 13
    print(f"{row['group']:9s} {row['name']:22s} {t}  {row['status']}  [{elapsed:.0f} s]", flush=True)


def _table(log):
    print(f"---- {log['device']}, {log['shape']} bf16, torch {log['torch']}, triton {log['triton']}")
    for row in log["entries"]:
        us, floor = row.get("median_us"), row.get("floor_us")
        frac = f"{100 * floor / us:5.1f}% of floor" if us and floor else ""
        t = f"{us:10.1f} us" if us is not None else f"{'-':>13s}"
        print(f"{row['group']:9s} {row['name']:22s} {t} {frac:>16s}  {row['status'][:60]}")


# --------------------------------------------------------------------------- offline compile (no GPU)


def _meta_inputs(s):
    """x, dt, A, B, C, D as meta tensors of shape ``s`` (bf16 x, B, C): enough to record the launches."""
    import torch

    meta = dict(device="meta")
    x = torch.empty(s["b"], s["L"], s["h"], s["p"], dtype=torch.bfloat16, **meta)
    dt, A, D = torch.empty(s["b"], s["L"], s["h"], **meta), torch.empty(s["h"], **meta), torch.empty(s["h"], **meta)
    B = torch.empty(s["b"], s["L"], s["g"], s["n"], dtype=torch.bfloat16, **meta)
    return x, dt, A, B, torch.empty_like(B), D


def _compile_rows(log, suffix=""):
    """Compile each recorded launch for sm_90 (once per kernel, side and ``DXB_APART``): one row each, with the
    local-memory instructions (LDL, STL) of its SASS's main loop."""
    import sm90  # benchmarks/sm90.py (this script's folder is on sys.path)

    out, seen = [], set()
    for fn, grid, args, kwargs in log:
        sig, ce, attrs, warps, stages = sm90.launch_signature(fn, args, kwargs)
        label = fn.fn.__name__ + (f" side {ce['SIDE']}" if "SIDE" in ce else "") + suffix
        label += " (dxb apart)" if ce.get("DXB_APART") else ""
        if label in seen:
            continue
        seen.add(label)
        k, regs, spill, sass = sm90.compile_sm90(fn, sig, ce, attrs, warps, stages)
        out.append(dict(kernel=label, grid=list(grid), warps=warps, stages=stages, registers=regs,
                        spill_stores=spill[0], spill_loads=spill[1], shared_bytes=k.metadata.shared,
                        **loop_counts(sass)))
    return out


def loop_counts(sass):
    """The main loop of a kernel's SASS (the longest backward branch; none: the whole kernel): its instructions,
    local-memory loads and stores (LDL, STL: spill traffic in every iteration) and HGMMA."""
    import re

    import sm90  # benchmarks/sm90.py (this script's folder is on sys.path)

    ins, loops = sm90.sass_loops(sass)
    lo, hi = max(loops, key=lambda r: r[1] - r[0]) if loops else (0, max((a for a, _ in ins), default=0))
    body = [re.sub(r"^@!?U?P\w+\s+", "", text).split()[0] for a, text in ins if lo <= a <= hi]
    count = lambda op: sum(1 for name in body if name.split(".")[0] == op)  # noqa: E731
    return dict(loop_instructions=len(body), loop_ldl=count("LDL"), loop_stl=count("STL"), loop_hgmma=count("HGMMA"))


def compile_all(shape=None):
    """Compile every kernel the entries launch for sm_90 (Triton's compiler, ptxas from its wheel):
    registers, spill bytes (stores/loads), shared memory. Returns a list of rows."""
    import torch

    from ssm_edu.kernels import ssd as kernel
    from ssm_edu.kernels import ssd_first, ssd_ladder

    x, dt, A, B, C, D = _meta_inputs(shape or dict(b=4, L=4096, h=128, p=64, n=128, g=1))

    def launches():
        ssd_first.ssd_first(x, dt, A, B, C)
        ssd_ladder.ssd_rung1(x, dt, A, B, C)
        ssd_ladder.ssd_rung2(x, dt, A, B, C)
        kernel.ssd_fwd(x, dt, A, B, C, 64, D=D)
        kernel.ssd_bwd(torch.empty_like(x), None, x, dt, A, B, C, 64, D=D)
        kernel.ssd_bwd(torch.empty_like(x), None, x, dt, A, B, C, 64, D=D, dxb_apart=True)  # the input side again

    return _compile_rows(record_ssd_launches(launches, {ssd_first: ["ssd_first_kernel"],
                                                        ssd_ladder: ["ssd_rung1_kernel", "ssd_rung2_kernel",
                                                                     "_ssd_cb"]}))


def compile_one_head(chunks=None, stages=None):
    """The backward's chunk kernel at ONE_HEAD as kernels/mamba3_ssd.py launches it (D, an initial state, the
    final state's gradient, ``turns``, ``ddt_decay_only``), with ``chunks_per_program`` and ``num_stages``
    (None: the launcher's choice). Rows labelled "(G = H, k chunks[, s stages])"."""
    import torch

    from ssm_edu.kernels import ssd as kernel

    x, dt, A, B, C, D = _meta_inputs(ONE_HEAD)
    h0 = torch.empty(x.shape[0], x.shape[2], x.shape[3], B.shape[3], device="meta")

    def launches():
        kernel.ssd_bwd(torch.empty_like(x), h0, x, dt, A, B, C, 64, D=D, initial_states=h0, ddt_decay_only=True,
                       turns=True, chunks_per_program=chunks, num_stages=stages)

    kernel.CHUNK_RUNS = True  # chunks=None: the launcher's rule (off by default in ssd_bwd)
    log = [launch for launch in record_ssd_launches(launches) if launch[0].fn.__name__ == "_ssd_bwd_chunk"]
    k = log[0][3]["CHUNKS"]
    return _compile_rows(log, f" (G = H, {k} chunk{'s' * (k > 1)}{'' if stages is None else f', s{stages}'})")


def record_ssd_launches(run, more=None):
    """The launches ``run()`` makes of kernels/ssd.py's kernels (and of ``more``, {module: [kernel names]}) on
    an H100's 132 SMs, recorded in order instead of launched (``sm90.record_launches``)."""
    import sm90
    from ssm_edu.kernels import ssd as kernel

    names = ["_ssd_cb", "_ssd_fwd", "_ssd_seg_fix", "_ssd_bwd_states", "_ssd_bwd_dstates", "_ssd_bwd_chunk"]
    sms = kernel._num_sms
    kernel._num_sms = lambda device: 132
    try:
        return sm90.record_launches({kernel: names, **(more or {})}, run)
    finally:
        kernel._num_sms = sms


def _print_rows(rows):
    print(f"{'kernel':52s} {'grid':>16s} warps stages regs spill(st/ld) smem    loop: instr LDL/STL HGMMA")
    for r in rows:
        print(f"{r['kernel']:52s} {str(tuple(r['grid'])):>16s} {r['warps']:5d} {r['stages']:6d} "
              f"{r['registers']:4d} {r['spill_stores']:5d}/{r['spill_loads']:<5d} {r['shared_bytes']:7d} "
              f"{r['loop_instructions']:11d} {r['loop_ldl']:3d}/{r['loop_stl']:<3d} {r['loop_hgmma']:5d}", flush=True)


def main():
    if "--worker" in sys.argv:
        worker(int(sys.argv[sys.argv.index("--worker") + 1]))
    elif "--compile" in sys.argv:
        print(f"sm_90 offline compile, {SHAPE_NAME} bf16 (the launchers' choices)")
        rows = compile_all()
        _print_rows(rows)
        print("JSON " + json.dumps(rows))
    elif "--compile-one-head" in sys.argv:  # the table of benchmarks/notes/ssd.md: chunks per program x stages
        print("sm_90 offline compile of _ssd_bwd_chunk, B{b} L{L} H{h} P{p} N{n} G{g} bf16, as Mamba-3's path "
              "launches it: the launcher's choice, then chunks per program x stages".format(**ONE_HEAD))
        rows = compile_one_head() + [r for k in (1, 2, 4, 8) for st in (1, 2, 3) for r in compile_one_head(k, st)]
        _print_rows(rows)
        print("JSON " + json.dumps(rows))
    else:
        sweep()


if __name__ == "__main__":
    main()
