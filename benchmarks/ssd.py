"""Benchmark rows of SSD (Mamba-2, chapter 8) and its peers (mamba_ssm, fla).

Floor (``Context.floor_us``), the larger of a memory and an arithmetic time:

- forward: x and y (b·L·H·P each) and B, C (b·L·G·N each) in the input dtype
  read or written once; the chunked algorithm's tensor-core FLOPs at Q = 64,
  2·b·H·L·(Q·N + Q·P + 2·P·N): C Bᵀ, the diagonal block, the chunk state and
  the off-diagonal output.
- forward plus backward: three times both. The backward must read x, dy, B, C
  and write dx, dB, dC (twice the forward's bytes), and its products are the
  forward's, transposed, twice over (gradients of both operands of each).

At the goal shape (B4 L4096 H128 P64 N128 G1, bf16) both are memory-bound:
545 MB forward, 1.6 GB forward plus backward.

Forward plus backward rows time ``y.backward(g)`` after the forward with x,
dt, A, B, C, D requiring gradients (for fla, q, k, v and the log-decay g).
"""

from __future__ import annotations

import torch

import ssm_edu

from . import peers
from .selective import _rand, fwd_bwd, peer_row, BYTES
from .suite import Context, checked, missing_row, register


# --------------------------------------------------------------------------- Mamba-2


def ssd_inputs(ctx, b, L, h, p, n, g, dtype, requires_grad=False):
    gen = torch.Generator(device=ctx.device).manual_seed(b + L + h + p + n)
    dev = ctx.device
    x = torch.randn(b, L, h, p, device=dev, generator=gen).to(dtype)
    dt = _rand(gen, b, L, h, device=dev, lo=1e-3, hi=1e-1)  # float32, as Mamba2 passes it
    A = -torch.exp(torch.randn(h, device=dev, generator=gen))
    B = torch.randn(b, L, g, n, device=dev, generator=gen).to(dtype)
    C = torch.randn(b, L, g, n, device=dev, generator=gen).to(dtype)
    D = torch.randn(h, device=dev, generator=gen)
    ts = [x, dt, A, B, C, D]
    for t in ts:
        t.requires_grad_(requires_grad)
    return ts


def ssd_floor(ctx, b, L, h, p, n, g, dtype, pass_, chunk=64):
    e = BYTES[dtype]
    io = e * (2 * b * L * h * p + 2 * b * L * g * n)
    # per chunk of Q: C Bᵀ (Q·Q·N), diagonal output (Q·Q·P), chunk state (Q·P·N), off-diagonal output (Q·P·N)
    flops = 2 * b * h * L * (chunk * n + chunk * p + 2 * p * n)
    k = 1 if pass_ == "fwd" else 3
    return ctx.floor_us(bytes_=k * io, flops=k * flops)


@register("ssd")
def bench_ssd(ctx: Context):
    """The goal shape (B4 L4096 H128 P64 N128 G1) and mamba_ssm's "small" preset, bf16."""
    for b, L, h, p, n, g in ((4, 4096, 128, 64, 128, 1), (4, 2048, 32, 64, 64, 1)):
        shape = f"B{b} L{L} H{h} P{p} N{n} G{g}"
        if not ctx.wants(shape):
            continue
        for pass_ in ("fwd", "fwd+bwd"):
            grad = pass_ == "fwd+bwd"
            x, dt, A, B, C, D = ts = ssd_inputs(ctx, b, L, h, p, n, g, torch.bfloat16, requires_grad=grad)
            base = {"op": "ssd", "pass": pass_, "shape": shape, "dtype": "bf16",
                    "floor_us": ssd_floor(ctx, b, L, h, p, n, g, torch.bfloat16, pass_)}
            with torch.no_grad():
                ref = ssm_edu.ssd(x, dt, A, B, C, D=D, impl="vectorized")
            for impl in ("triton", "vectorized"):
                fn = lambda impl=impl: ssm_edu.ssd(x, dt, A, B, C, D=D, impl=impl)
                with torch.no_grad():
                    checked(f"ssd {impl}", fn(), ref, torch.bfloat16)
                yield base | {"impl": impl, "median_us": ctx.time_us(fwd_bwd(fn, ts) if grad else fn)}
            try:
                combined = peers.mamba_ssm("ops.triton.ssd_combined").mamba_chunk_scan_combined
                # chunk 256: Mamba2's default, the fastest setting of mamba_ssm's kernels on an H100
                yield peer_row(ctx, base | {"impl": "mamba_ssm"}, lambda: combined(x, dt, A, B, C, 256, D=D), ref, ts)
            except peers.Missing as why:
                yield missing_row("ssd", "mamba_ssm", pass_, shape, "bf16", str(why))
            try:
                gla = peers.pure_python("fla.ops.simple_gla").chunk_simple_gla
                rep = h // g
                q = C.detach().repeat_interleave(rep, dim=2).requires_grad_(grad)  # (b, L, h, n): fla has no groups
                k = B.detach().repeat_interleave(rep, dim=2).requires_grad_(grad)
                with torch.no_grad():
                    v = (x * dt[..., None]).to(x.dtype)
                    gate = dt * A  # (b, L, h): log of the decay
                v.requires_grad_(grad)
                gate.requires_grad_(grad)  # its gradient is SSD's dt and A gradients
                ref_noD = ref - (D[:, None] * x).to(ref.dtype)  # fla has no D skip
                yield peer_row(ctx, base | {"impl": "fla"}, lambda: gla(q, k, v, g=gate, scale=1.0)[0], ref_noD,
                               [q, k, v, gate])
            except peers.Missing as why:
                yield missing_row("ssd", "fla", pass_, shape, "bf16", str(why))
            except RuntimeError as why:  # fla refuses some Triton versions on Hopper (its gated backward, fla#640)
                if "CUDA error" in str(why):
                    raise
                yield missing_row("ssd", "fla", pass_, shape, "bf16", f"fla refused to run: {str(why)[:300]}")


__all__ = ["ssd_inputs", "ssd_floor", "bench_ssd"]
