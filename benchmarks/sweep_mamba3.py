"""Sweep of the Mamba-3 Triton kernels' launch variants at the goal shape (B4 L4096 H32 P64 N128 G1, bf16).

    python benchmarks/sweep_mamba3.py [LABEL ...]        (on a GPU; about 90 s on an H100)

Every variant is first checked, then timed (median of triton.testing.do_bench):

- forward variants: y against the chunked PyTorch form (relative error < 2e-2);
- forward plus backward variants: y and the gradients of x, Δ, A, B, C, λ, θ and D against autograd
  through the chunked PyTorch form in float32 on the same inputs (each < 2e-2);
- MIMO (R = 4): y on the first 512 steps against the PyTorch form.

A variant that fails its check is reported and not timed. The variants run in a child process; if
one crashes it (an illegal memory access poisons the CUDA context), the parent records it as a fault
and starts a new child for the rest. LABEL keeps the variants whose label contains it. The last lines
are the table; with $OUT set, the table, the log and a JSON of the results go there. Without LABEL
the first CORE variants run; a LABEL selects among all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHAPE = dict(b=4, L=4096, h=32, p=64, n=128, g=1)
if os.environ.get("SWEEP_SMALL"):  # a dry run of the whole script on a CPU (interpreter, tiny shape)
    SHAPE = dict(b=1, L=40, h=2, p=16, n=8, g=1)
# (label, pass, knobs of kernels/mamba3.py and kernels/mamba3_bwd.py); the defaults first. The first
# CORE of them run by default (about 90 s on an H100); name others by label to run them too.
# Variants with knobs are the fused kernel's; path "ssd" is kernels/mamba3_ssd.py (the SISO default), whose
# knob ``rotate`` picks the form of its rotation ("walk", "tiles" or "joined", the default), ``fused_rotation`` its
# forward with the rotation inside the chunk walk (kernels/mamba3_ssd_fwd.py; a dict: with those launch options);
# ``rotate`` as a dict adds the backward's launch options: "bwd_heads" (heads per program of _rotate_bwd's tiled
# form, 0 automatic: "heads loop", _rotate_bwd_heads; 1 the launch per head) and "bwd_stages" (the head loop's
# pipeline depth). The heads loop is the default (mamba3_ssd.ROT_BWD_HEADS = True: 4094 against 4665 us on an H100).
# "gate" (forward only, not a kernel knob) passes z, as the suite's rows and the peer's 669 us (H200) do.
VARIANTS = [
    ("fwd fused kernel", "fwd", dict(path="fused")),
    ("fwd through SSD", "fwd", dict(path="ssd")),
    ("fwd through SSD, walk", "fwd", dict(path="ssd", rotate="walk")),
    ("fwd through SSD, tiles rotation", "fwd", dict(path="ssd", rotate="tiles")),
    ("fwd through SSD, fused rotation", "fwd", dict(path="ssd", fused_rotation=True)),
    ("fwd through SSD, fused rotation, gate", "fwd", dict(path="ssd", fused_rotation=True, gate=True)),
    ("fwd through SSD, gate", "fwd", dict(path="ssd", gate=True)),
    ("fwd bp64", "fwd", dict(block_p=64)),
    ("fwd rows16", "fwd", dict(max_rows=16)),
    ("fwd rows64 w8", "fwd", dict(max_rows=64, num_warps=8)),
    ("fwd exact trig", "fwd", dict(fast_trig=False)),
    ("fwd+bwd fused kernel", "fwd+bwd", dict(path="fused")),
    ("fwd+bwd through SSD", "fwd+bwd", dict(path="ssd")),
    ("fwd+bwd through SSD, walk", "fwd+bwd", dict(path="ssd", rotate="walk")),
    ("fwd+bwd through SSD, tiles rotation", "fwd+bwd", dict(path="ssd", rotate="tiles")),
    ("fwd+bwd through SSD, fused rotation", "fwd+bwd", dict(path="ssd", fused_rotation=True)),
    ("fwd+bwd through SSD, heads loop", "fwd+bwd", dict(path="ssd", rotate=dict(bwd_heads=0))),
    ("fwd+bwd through SSD, one head a program", "fwd+bwd", dict(path="ssd", rotate=dict(bwd_heads=1))),
    ("fwd+bwd group heads (no atomics)", "fwd+bwd", dict(bwd_heads=0)),
    ("fwd+bwd one chunk launch", "fwd+bwd", dict(bwd_split=False)),
    ("fwd+bwd rows16", "fwd+bwd", dict(bwd_max_rows=16)),
    ("mimo R4 fwd default", "mimo", {}),
    # not run by default
    ("fwd w8 bp64", "fwd", dict(num_warps=8, block_p=64)),
    ("fwd stages1", "fwd", dict(num_stages=1)),
    ("fwd+bwd dx one head per program", "fwd+bwd", dict(bwd_x_heads=1)),
    ("fwd+bwd state bp32 w8", "fwd+bwd", dict(bwd_state_block_p=32, bwd_state_warps=8)),
    ("fwd+bwd chunk w4", "fwd+bwd", dict(bwd_chunk_warps=4)),
    ("mimo R4 fwd rows64 w8", "mimo", dict(max_rows=64, num_warps=8)),
    ("fwd fused rotation q64 bp32 w8", "fwd", dict(path="ssd", fused_rotation=dict(block_q=64, block_p=32))),
    ("fwd fused rotation q64 bp32 w4", "fwd", dict(path="ssd", fused_rotation=dict(block_q=64, block_p=32,
                                                                                     num_warps=4))),
    ("fwd fused rotation q32 bp32 w4", "fwd", dict(path="ssd", fused_rotation=dict(block_p=32, num_warps=4))),
    ("fwd fused rotation q64 bp64 w8", "fwd", dict(path="ssd", fused_rotation=dict(block_q=64))),
    ("fwd fused rotation stages1", "fwd", dict(path="ssd", fused_rotation=dict(num_stages=1))),
    ("fwd fused rotation exact trig", "fwd", dict(path="ssd", fused_rotation=dict(fast_trig=False))),
    ("fwd+bwd heads loop stages1", "fwd+bwd", dict(path="ssd", rotate=dict(bwd_heads=0, bwd_stages=1))),
    ("fwd+bwd heads loop stages2", "fwd+bwd", dict(path="ssd", rotate=dict(bwd_heads=0, bwd_stages=2))),
    ("fwd+bwd heads loop 8 heads", "fwd+bwd", dict(path="ssd", rotate=dict(bwd_heads=8))),
    ("fwd+bwd heads loop 2 heads", "fwd+bwd", dict(path="ssd", rotate=dict(bwd_heads=2))),
]
CORE = 22


def child(labels):
    """Run the variants named in ``labels`` in this process; one JSON line per variant on stdout."""
    import torch

    import ssm_edu
    import benchmarks.suite  # noqa: F401  (the package's modules in their import order)
    from benchmarks.mamba3 import mamba3_inputs
    from benchmarks.selective import fwd_bwd
    from ssm_edu.kernels.mamba3 import mamba3_triton

    dev = ssm_edu.default_device()
    if dev.type == "cuda":
        from triton.testing import do_bench
    else:  # the dry run: a plain timer
        def do_bench(fn, warmup=0, rep=0, return_mode="median"):
            t = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - t)
    s = SHAPE
    names = ("x", "dt", "A", "B", "C", "lam", "theta")
    cache = {}

    def siso(grad):
        if grad not in cache:
            ts, _ = mamba3_inputs(dev, s["b"], s["L"], s["h"], s["p"], s["n"], s["g"], requires_grad=grad)
            cache[grad] = ts
        return cache[grad]

    def gate():  # z for the variants with the gate (knob "gate"), x's shape and dtype
        if "z" not in cache:
            x = siso(False)["x"]
            cache["z"] = torch.randn(x.shape, device=dev, generator=torch.Generator(device=dev).manual_seed(7)).to(
                x.dtype)
        return cache["z"]

    def reference(kind):
        if kind in cache:
            return cache[kind]
        if kind in ("fwd", "fwd gate"):
            ts = siso(False)
            with torch.no_grad():
                out = ssm_edu.mamba3(*(ts[k] for k in names), D=ts["D"], z=gate() if kind == "fwd gate" else None,
                                     impl="vectorized")
        else:  # gradients in float32 through the chunked PyTorch form, same (rounded) inputs
            ts = siso(True)
            leaves = {k: v.detach().float().requires_grad_() for k, v in ts.items()}
            y = ssm_edu.mamba3(*(leaves[k] for k in names), D=leaves["D"], impl="vectorized")
            wy = torch.randn(y.shape, device=dev, generator=torch.Generator(device=dev).manual_seed(5))
            (y * wy).sum().backward()
            out = (y.detach(), wy, {k: v.grad for k, v in leaves.items()})
            del leaves
        cache[kind] = out
        return out

    for label in labels:
        print(json.dumps({"start": label}), flush=True)
        _, kind, knobs = next(v for v in VARIANTS if v[0] == label)
        row = {"label": label, "pass": kind, "knobs": knobs}
        try:
            if kind == "fwd":
                ts = siso(False)
                kn = dict(knobs)
                z = gate() if kn.pop("gate", False) else None
                fn = lambda: mamba3_triton(*(ts[k] for k in names), D=ts["D"], z=z, **kn)  # noqa: E731
                with torch.no_grad():
                    row["err"] = float(ssm_edu.rel_error(fn(), reference("fwd" if z is None else "fwd gate")))
                    ok = row["err"] < 2e-2
                    if ok:
                        row["us"] = 1e3 * do_bench(fn, warmup=25, rep=100, return_mode="median")
            elif kind == "fwd+bwd":
                y_ref, wy, g_ref = reference("grad")
                ts = siso(True)
                fn = lambda: mamba3_triton(*(ts[k] for k in names), D=ts["D"], **knobs)  # noqa: E731
                for t in ts.values():
                    t.grad = None
                y = fn()
                (y.float() * wy).sum().backward()
                errs = {"y": float(ssm_edu.rel_error(y, y_ref))}
                errs.update({k: float(ssm_edu.rel_error(ts[k].grad, g_ref[k])) for k in g_ref})
                row["err"] = max(errs.values())
                row["errs"] = {k: round(v, 5) for k, v in errs.items()}
                ok = row["err"] < 2e-2
                if ok:
                    row["us"] = 1e3 * do_bench(fwd_bwd(fn, list(ts.values())), warmup=10, rep=60, return_mode="median")
            else:  # MIMO R = 4
                ts, _ = mamba3_inputs(dev, s["b"], s["L"], s["h"], s["p"], s["n"], s["g"], R=4)
                args = [ts[k] for k in names]
                part = [t[:1, :min(512, s["L"])] for t in args]
                with torch.no_grad():
                    ref = ssm_edu.mamba3(*part, D=ts["D"], impl="vectorized")
                    row["err"] = float(ssm_edu.rel_error(mamba3_triton(*part, D=ts["D"], **knobs), ref))
                    ok = row["err"] < 2e-2
                    if ok:
                        fn = lambda: mamba3_triton(*args, D=ts["D"], **knobs)  # noqa: E731
                        row["us"] = 1e3 * do_bench(fn, warmup=25, rep=100, return_mode="median")
            row["status"] = "ok" if ok else "WRONG"
        except Exception as e:  # noqa: BLE001  (a compile error or a launch failure: report, go on)
            row["status"] = f"error {type(e).__name__}: {str(e)[:200]}"
            if "illegal" in str(e).lower() or "CUDA error" in str(e):
                print(json.dumps(row), flush=True)
                raise  # the context is gone: let the parent start a new child
        print(json.dumps(row), flush=True)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        return
    if len(sys.argv) < 2:
        wanted = [v[0] for v in VARIANTS[:CORE]]
    else:
        wanted = [v[0] for v in VARIANTS if any(s in v[0] for s in sys.argv[1:])]
    out_dir = os.environ.get("OUT")
    import torch
    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (dry run)"
    head = f"{gpu} torch {torch.__version__} triton {triton.__version__}"
    print(head, flush=True)
    results, log, todo, t0 = {}, [], list(wanted), time.time()
    while todo:
        proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(todo)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        current = None
        for line in proc.stdout:
            log.append(line)
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "start" in msg:
                current = msg["start"]
            elif "label" in msg:
                results[msg["label"]] = msg
                us = f"{msg['us']:9.1f} us" if "us" in msg else " " * 12
                print(f"{msg['label']:34s} {us}  err {msg.get('err', float('nan')):.1e} {msg['status']}", flush=True)
                current = None
        proc.wait()
        done = [lab for lab in todo if lab in results]
        if current is not None and current not in results:  # the child died inside this variant
            results[current] = {"label": current, "status": f"fault (child exit {proc.returncode})"}
            print(f"{current:34s} FAULT: the child process died (exit {proc.returncode}); going on", flush=True)
            done.append(current)
        todo = [lab for lab in todo if lab not in done]
        if not done and todo:  # the child died before starting anything: do not loop forever
            for lab in todo:
                results[lab] = {"label": lab, "status": f"not run (child exit {proc.returncode})"}
            break
    table = [head, f"{'variant':34s} {'median':>12s}  {'max rel err':>11s}  status  knobs"]
    for lab in wanted:
        r = results.get(lab, {"status": "missing"})
        us = f"{r['us']:9.1f} us" if "us" in r else " " * 12
        err = f"{r['err']:.1e}" if "err" in r else "-"
        knobs = next(v[2] for v in VARIANTS if v[0] == lab)
        table.append(f"{lab:34s} {us}  {err:>11s}  {r['status'][:40]}  {knobs}")
    table.append(f"total {time.time() - t0:.0f} s")
    print("\n".join(table), flush=True)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "sweep_mamba3.txt"), "w") as f:
            f.write("\n".join(table) + "\n")
        with open(os.path.join(out_dir, "sweep_mamba3.log"), "w") as f:
            f.writelines(log)
        import datetime

        from benchmarks.suite import gpu_slug

        b, L, h, p, n, g = (SHAPE[k] for k in ("b", "L", "h", "p", "n", "g"))
        doc = {"device": gpu, "torch": torch.__version__, "triton": triton.__version__,
               "date": datetime.date.today().isoformat(), "shape": f"B{b} L{L} H{h} P{p} N{n} G{g}",
               "dtype": "bf16", "dry_run": not torch.cuda.is_available(),
               "results": [results.get(lab) for lab in wanted]}
        # chapter 9 reads book/data/benchmarks/logs/sweep_mamba3-<gpu>.json: copy this file there under that name
        with open(os.path.join(out_dir, f"sweep_mamba3-{gpu_slug(gpu)}.json"), "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
