"""Benchmark rows of Mamba-3 (chapter 9) and its peer (mamba_ssm's Triton Mamba-3).

Floor (``Context.floor_us``): x, y, B, C, θ bytes; FLOPs as for ssd, doubled
for the trapezoid's two-term weights.
"""

from __future__ import annotations

import torch

import ssm_edu

from . import peers
from .selective import _rand, peer_row
from .suite import Context, checked, missing_row, register


# --------------------------------------------------------------------------- Mamba-3


@register("mamba3")
def bench_mamba3(ctx: Context):
    """SISO forward at the goal shape (B4 L4096 H32 P64 N128 G1), bf16, against mamba_ssm's Triton Mamba-3."""
    b, L, h, p, n, g = 4, 4096, 32, 64, 128, 1
    shape = f"B{b} L{L} H{h} P{p} N{n} G{g}"
    if not ctx.wants(shape):
        return
    gen = torch.Generator(device=ctx.device).manual_seed(3)
    dev = ctx.device
    x = torch.randn(b, L, h, p, device=dev, generator=gen).to(torch.bfloat16)
    dt = _rand(gen, b, L, h, device=dev, lo=1e-3, hi=1e-1)
    A = -_rand(gen, b, L, h, device=dev, lo=0.5, hi=2.0)
    lam = _rand(gen, b, L, h, device=dev, lo=0.05, hi=0.95)
    B = torch.randn(b, L, g, n, device=dev, generator=gen).to(torch.bfloat16)
    C = torch.randn(b, L, g, n, device=dev, generator=gen).to(torch.bfloat16)
    raw_angles = torch.randn(b, L, h, n // 2, device=dev, generator=gen)
    theta = torch.pi * torch.tanh(raw_angles)  # the peer takes raw angles and applies π·tanh itself
    D = torch.randn(h, device=dev, generator=gen)
    io = 2 * (2 * b * L * h * p + 2 * b * L * g * n) + 4 * (3 * b * L * h + b * L * h * n // 2)
    floor = ctx.floor_us(bytes_=io, flops=2 * 2 * b * h * L * (64 * n + 64 * p + 2 * p * n))
    base = {"op": "mamba3", "pass": "fwd", "shape": shape, "dtype": "bf16", "floor_us": floor}
    ref = ssm_edu.mamba3(x, dt, A, B, C, lam, theta, D=D, impl="vectorized")
    for impl in ("triton", "vectorized"):
        fn = lambda impl=impl: ssm_edu.mamba3(x, dt, A, B, C, lam, theta, D=D, impl=impl)
        checked(f"mamba3 {impl}", fn(), ref, torch.bfloat16)
        yield base | {"impl": impl, "median_us": ctx.time_us(fn)}
    try:
        siso = peers.mamba_ssm("ops.triton.mamba3.mamba3_siso_combined").mamba3_siso_combined
        hb = lambda t: t.transpose(1, 2).contiguous()  # (b, L, h) -> (b, h, L), the peer's layout
        zeros = torch.zeros(h, n, device=dev)
        trap = torch.logit(lam)  # the peer applies a sigmoid to its Trap input
        args = (C, B, x, hb(dt * A), hb(dt), hb(trap), zeros, zeros, raw_angles)
        yield peer_row(ctx, base | {"impl": "mamba_ssm"}, lambda: siso(*args, D=D), ref)
    except peers.Missing as why:
        yield missing_row("mamba3", "mamba_ssm", "fwd", shape, "bf16", str(why))


__all__ = ["bench_mamba3"]
