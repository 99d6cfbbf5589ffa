"""Benchmark rows of Mamba-3 (chapter 9) and its peer (mamba_ssm's Triton Mamba-3).

Rows (all bf16 inputs; Δ, A, λ, θ, D float32, as the Mamba3 block passes them):

- ``mamba3``, B4 L4096 H32 P64 N128 G1 (SISO): forward (triton, vectorized, mamba_ssm's
  ``mamba3_siso_combined``) and forward plus backward (triton, mamba_ssm; the vectorized form's
  backward, autograd through the chunked PyTorch code, is left out: tens of milliseconds). The
  SISO path that is not ``kernels/mamba3.py``'s default (``SISO_PATH``: the fused kernel, or the
  rotation kernel and SSD's kernels of ``kernels/mamba3_ssd.py``) is timed too, as
  ``triton-ssd`` or ``triton-fused``.
- ``mamba3``, B4 L4096 H32 R4 P64 N128 G1 (MIMO of rank 4): forward (triton); mamba_ssm's MIMO path
  needs TileLang (or the CUTLASS DSL for its step), so its row says whether it loads.
- ``mamba3_step``, B{1, 64} H32 P64 N128 R{1, 2, 4}: one decoding step (triton, the PyTorch loop,
  mamba_ssm's Triton SISO step for R = 1), timed as a replayed CUDA graph (a decoding loop launches
  the same step again and again; without a graph a batch of one would time Python).

Floors (``Context.floor_us``):

- forward: x, y (and R of them for MIMO), B, C in bf16, θ, Δ, A, λ in float32, moved once; the
  chunked algorithm's tensor-core FLOPs per token and head, 2 (Q R² N + Q R² P + 2 R N P) with
  Q R = 64 rows per chunk (memory sets the floor at these shapes);
- forward plus backward: three times both (as for ``ssd``);
- decoding step: the float32 state read and written once, 8 P N bytes per head, plus the small
  vectors. MIMO does about 2 + 6R operations per state entry for those 8 bytes.
"""

from __future__ import annotations

import math

import torch

import ssm_edu

from . import peers
from .selective import _rand, fwd_bwd, peer_row
from .suite import Context, checked, missing_row, register

SISO = (4, 4096, 32, 64, 128, 1)  # b, L, H, P, N, G: the goal shape
MIMO_R = 4


def mamba3_inputs(device, b, L, h, p, n, g, R=None, dtype=torch.bfloat16, requires_grad=False, seed=3):
    """Random inputs in the model's ranges; ``raw`` are the angles before π·tanh (the peer applies it)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    r = () if R is None else (R,)
    x = torch.randn(b, L, h, *r, p, device=device, generator=gen).to(dtype)
    dt = _rand(gen, b, L, h, device=device, lo=1e-3, hi=1e-1)
    A = -_rand(gen, b, L, h, device=device, lo=0.5, hi=2.0)
    lam = _rand(gen, b, L, h, device=device, lo=0.05, hi=0.95)
    B = torch.randn(b, L, g, *r, n, device=device, generator=gen).to(dtype)
    C = torch.randn(b, L, g, *r, n, device=device, generator=gen).to(dtype)
    raw = torch.randn(b, L, h, n // 2, device=device, generator=gen)
    theta = torch.pi * torch.tanh(raw)
    D = torch.randn(h, device=device, generator=gen)
    ts = dict(x=x, dt=dt, A=A, B=B, C=C, lam=lam, theta=theta, D=D)
    for t in ts.values():
        t.requires_grad_(requires_grad)
    return ts, raw


def mamba3_floor(ctx, b, L, h, p, n, g, R=1, pass_="fwd", rows=64):
    io = 2 * (2 * b * L * h * R * p + 2 * b * L * g * R * n) + 4 * (3 * b * L * h + b * L * h * n // 2)
    Q = max(1, rows // R)  # tokens per chunk
    flops = 2 * b * h * L * (Q * R * R * n + Q * R * R * p + 2 * R * n * p)
    k = 1 if pass_ == "fwd" else 3
    return ctx.floor_us(bytes_=k * io, flops=k * flops)


def _shape(b, L, h, p, n, g, R=None):
    return f"B{b} L{L} H{h}{'' if R is None else f' R{R}'} P{p} N{n} G{g}"


def _siso_peer(ts, raw):
    """mamba_ssm's ``mamba3_siso_combined`` on our inputs, as a closure (its layout: (b, H, L) scalars,
    the trapezoid's λ before its sigmoid, raw angles; no biases)."""
    siso = peers.mamba_ssm("ops.triton.mamba3.mamba3_siso_combined").mamba3_siso_combined
    x, dt, A, B, C, lam, D = (ts[k] for k in ("x", "dt", "A", "B", "C", "lam", "D"))
    h, n = x.shape[2], B.shape[-1]
    grad = x.requires_grad
    hb = lambda t: t.detach().transpose(1, 2).contiguous().requires_grad_(grad)  # noqa: E731  (b, L, h) -> (b, h, L)
    adt, dtp, trap = hb(dt * A), hb(dt), hb(torch.logit(lam))  # the peer applies a sigmoid to its Trap input
    angles = raw.detach().clone().requires_grad_(grad)
    zeros = torch.zeros(h, n, device=x.device)
    return (lambda: siso(C, B, x, adt, dtp, trap, zeros, zeros, angles, D=D)), [C, B, x, adt, dtp, trap, angles, D]


@register("mamba3")
def bench_mamba3(ctx: Context):
    """SISO forward and forward plus backward at the goal shape, and the MIMO (R = 4) forward, bf16."""
    from ssm_edu.kernels import mamba3 as kernel

    b, L, h, p, n, g = SISO
    shape = _shape(b, L, h, p, n, g)
    if ctx.wants(shape):
        for pass_ in ("fwd", "fwd+bwd"):
            grad = pass_ == "fwd+bwd"
            ts, raw = mamba3_inputs(ctx.device, b, L, h, p, n, g, requires_grad=grad)
            args = [ts[k] for k in ("x", "dt", "A", "B", "C", "lam", "theta")]
            base = {"op": "mamba3", "pass": pass_, "shape": shape, "dtype": "bf16",
                    "floor_us": mamba3_floor(ctx, b, L, h, p, n, g, pass_=pass_)}
            with torch.no_grad():
                ref = ssm_edu.mamba3(*args, D=ts["D"], impl="vectorized")
            for impl in ("triton",) if grad else ("triton", "vectorized"):
                fn = lambda impl=impl: ssm_edu.mamba3(*args, D=ts["D"], impl=impl)
                with torch.no_grad():
                    checked(f"mamba3 {impl}", fn(), ref, torch.bfloat16)
                yield base | {"impl": impl, "median_us": ctx.time_us(fwd_bwd(fn, list(ts.values())) if grad else fn)}
            # the SISO path that is not the default (kernels/mamba3.py: SISO_PATH), as row "triton-<path>"
            other = "ssd" if kernel.SISO_PATH == "fused" else "fused"
            fn = lambda: kernel.mamba3_triton(*args, D=ts["D"], path=other)  # noqa: E731
            try:
                with torch.no_grad():
                    checked(f"mamba3 triton path={other}", fn(), ref, torch.bfloat16)
                yield base | {"impl": f"triton-{other}",
                              "median_us": ctx.time_us(fwd_bwd(fn, list(ts.values())) if grad else fn)}
            except Exception as err:  # noqa: BLE001  (a failing variant must not cost the op's other rows)
                yield missing_row("mamba3", f"triton-{other}", pass_, shape, "bf16", f"{type(err).__name__}: {err}"[:300])
            try:
                peer, leaves = _siso_peer(ts, raw)
                yield peer_row(ctx, base | {"impl": "mamba_ssm"}, peer, ref, leaves)
            except peers.Missing as why:
                yield missing_row("mamba3", "mamba_ssm", pass_, shape, "bf16", str(why))
    shape = _shape(b, L, h, p, n, g, MIMO_R)
    if ctx.wants(shape):
        ts, _ = mamba3_inputs(ctx.device, b, L, h, p, n, g, R=MIMO_R)
        args = [ts[k] for k in ("x", "dt", "A", "B", "C", "lam", "theta")]
        base = {"op": "mamba3", "pass": "fwd", "shape": shape, "dtype": "bf16",
                "floor_us": mamba3_floor(ctx, b, L, h, p, n, g, R=MIMO_R)}
        fn = lambda: ssm_edu.mamba3(*args, D=ts["D"], impl="triton")  # noqa: E731
        # checked on the first sequence's first 512 steps against the chunked PyTorch form (the whole
        # shape would need (b, chunks, H, Q R, Q R) scores in float32)
        part = [t[:1, :512] for t in args]
        ref = ssm_edu.mamba3(*part, D=ts["D"], impl="vectorized")
        checked("mamba3 MIMO triton", ssm_edu.mamba3(*part, D=ts["D"], impl="triton"), ref, torch.bfloat16)
        yield base | {"impl": "triton", "median_us": ctx.time_us(fn)}
        try:
            peers.mamba_ssm("ops.tilelang.mamba3.mamba3_mimo")
            why = "mamba_ssm's MIMO kernels load, but this suite has no adapter for their inputs yet"
        except peers.Missing as err:
            why = f"mamba_ssm's MIMO prefill is TileLang, which this machine lacks ({str(err)[:160]})"
        yield missing_row("mamba3", "mamba_ssm", "fwd", shape, "bf16", why)


def _graph_time_us(fn):
    """The median time of ``fn`` replayed from a CUDA graph (us); None if it cannot be captured."""
    from triton.testing import do_bench_cudagraph

    try:
        return 1e3 * do_bench_cudagraph(fn, rep=50, return_mode="median")
    except Exception:  # noqa: BLE001  (an op that cannot be captured: say so by its absence)
        return None


@register("mamba3_step")
def bench_mamba3_step(ctx: Context):
    """One decoding step, batch 1 and 64, ranks 1, 2, 4 (H32 P64 N128 G1; float32 state, bf16 x, B, C)."""
    h, p, n, g = 32, 64, 128, 1
    for b in (1, 64):
        for R in (1, 2, 4):
            shape = f"B{b} H{h} P{p} N{n} R{R}"
            if not ctx.wants(shape):
                continue
            gen = torch.Generator(device=ctx.device).manual_seed(b * 10 + R)
            dev = ctx.device
            rk = () if R == 1 else (R,)  # R = 1 is SISO's layout
            state = ssm_edu.Mamba3State(torch.randn(b, h, p, n, device=dev, generator=gen),
                                        2 * math.pi * torch.rand(b, h, n // 2, device=dev, generator=gen),
                                        torch.randn(b, h, *rk, n, device=dev, generator=gen),
                                        torch.randn(b, h, *rk, p, device=dev, generator=gen))
            x = torch.randn(b, h, *rk, p, device=dev, generator=gen).to(torch.bfloat16)
            B = torch.randn(b, g, *rk, n, device=dev, generator=gen).to(torch.bfloat16)
            C = torch.randn(b, g, *rk, n, device=dev, generator=gen).to(torch.bfloat16)
            dt = _rand(gen, b, h, device=dev, lo=1e-3, hi=1e-1)
            A = -_rand(gen, b, h, device=dev, lo=0.5, hi=2.0)
            lam = _rand(gen, b, h, device=dev, lo=0.05, hi=0.95)
            raw = torch.randn(b, h, n // 2, device=dev, generator=gen)
            theta = torch.pi * torch.tanh(raw)
            D = torch.randn(h, device=dev, generator=gen)
            state_bytes = 2 * 4 * b * h * p * n  # read and written once, float32
            small = b * h * (4 * (n // 2) * 2 + 4 * R * (n + p) * 2) + 2 * b * R * (h * p * 2 + 2 * g * n)
            base = {"op": "mamba3_step", "pass": "fwd", "shape": shape, "dtype": "bf16",
                    "floor_us": ctx.floor_us(bytes_=state_bytes + small), "timing": "cuda graph",
                    "flops_per_state_entry": 2 + 6 * R}
            ref, _ = ssm_edu.mamba3_step(state, x, dt, A, B, C, lam, theta, D=D, impl="naive")
            for impl in ("triton", "naive"):
                def fn(impl=impl):
                    return ssm_edu.mamba3_step(state, x, dt, A, B, C, lam, theta, D=D, impl=impl)

                checked(f"mamba3_step {impl}", fn()[0], ref, torch.bfloat16)
                us = _graph_time_us(fn)
                if us is None:
                    yield missing_row("mamba3_step", impl, "fwd", shape, "bf16", "could not be captured in a CUDA graph")
                else:
                    yield base | {"impl": impl, "median_us": us}
            if R > 1:
                yield missing_row("mamba3_step", "mamba_ssm", "fwd", shape, "bf16",
                                  "mamba_ssm's MIMO step is CuTe DSL (nvidia-cutlass-dsl), which this machine lacks")
                continue
            try:
                step = peers.mamba_ssm("ops.triton.mamba3.mamba3_siso_step").mamba3_siso_step
                zeros = torch.zeros(h, n, device=dev)
                st = (state.angle, state.h, state.k, state.x)
                adt, trap = dt * A, torch.logit(lam)  # its layout: Δ A, and λ before a sigmoid
                peer = lambda: step(C, B, x, adt, dt, trap, zeros, zeros, raw, D=D,  # noqa: E731
                                    Input_States=st)
                out = peer()
                out = out[0] if isinstance(out, tuple) else out
                us = _graph_time_us(peer)
                row = base | {"impl": "mamba_ssm", "peer_rel_error": float(ssm_edu.rel_error(out.float(), ref.float()))}
                if us is None:
                    yield missing_row("mamba3_step", "mamba_ssm", "fwd", shape, "bf16", "could not be captured in a CUDA graph")
                else:
                    yield row | {"median_us": us}
            except (peers.Missing, Exception) as why:  # noqa: BLE001  (a peer that fails is a missing row)
                yield missing_row("mamba3_step", "mamba_ssm", "fwd", shape, "bf16", f"{type(why).__name__}: {str(why)[:160]}")


__all__ = ["bench_mamba3", "bench_mamba3_step", "mamba3_inputs", "mamba3_floor"]
