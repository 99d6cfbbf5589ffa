"""Benchmark rows of chapter 10's long sequences: the scans against attention (SDPA) up to a million tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import ssm_edu

from .selective import scan_inputs, scan_floor
from .ssd import ssd_inputs, ssd_floor
from .suite import Context, missing_row, register


# --------------------------------------------------------------------------- long sequences


def _peak_mib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


@register("long_context")
def bench_long_context(ctx: Context):
    """Batch 1, L = 2^10 .. 2^20: the selective scan (D1024 N16) and SSD (H16 P64 N64) against causal SDPA.

    SDPA runs with 16 heads of 64 (model width 1024) in bf16 until it fails or
    exceeds 2 s a call; rows then stop for it. ``peak_mib`` is the extra memory
    a call allocates beyond its inputs.
    """
    dev = ctx.device
    sdpa_alive = True
    for logL in range(10, 21):
        L = 1 << logL
        d, n = 1024, 16
        shape = f"B1 D{d} L{L} N{n}"
        if ctx.wants(shape):
            u, delta, A, B, C, D, z, bias = scan_inputs(ctx, 1, d, L, n, torch.bfloat16)
            fn = lambda: ssm_edu.selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True,
                                                impl="triton")
            yield {"op": "selective_scan", "impl": "triton", "pass": "fwd", "shape": shape, "dtype": "bf16",
                   "median_us": ctx.time_us(fn), "floor_us": scan_floor(ctx, 1, d, L, n, torch.bfloat16, "fwd"),
                   "peak_mib": _peak_mib(fn)}
            del u, delta, B, C, z
        h, p, n2 = 16, 64, 64
        shape = f"B1 L{L} H{h} P{p} N{n2} G1"
        if ctx.wants(shape):
            x, dt, A2, B2, C2, D2 = ssd_inputs(ctx, 1, L, h, p, n2, 1, torch.bfloat16)
            fn = lambda: ssm_edu.ssd(x, dt, A2, B2, C2, D=D2, impl="triton")
            yield {"op": "ssd", "impl": "triton", "pass": "fwd", "shape": shape, "dtype": "bf16",
                   "median_us": ctx.time_us(fn), "floor_us": ssd_floor(ctx, 1, L, h, p, n2, 1, torch.bfloat16, "fwd"),
                   "peak_mib": _peak_mib(fn)}
            del x, B2, C2
        shape = f"B1 H16 L{L} P64"
        if sdpa_alive and ctx.wants(shape):
            try:
                q, k, v = (torch.randn(1, 16, L, 64, device=dev, dtype=torch.bfloat16) for _ in range(3))
                fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
                us = ctx.time_us(fn)
                flops = 2 * 2 * 16 * L * L * 64 / 2  # QKᵀ and PV over the causal half
                yield {"op": "sdpa_causal", "impl": "torch", "pass": "fwd", "shape": shape, "dtype": "bf16",
                       "median_us": us, "floor_us": ctx.floor_us(bytes_=4 * 2 * 16 * L * 64, flops=flops),
                       "peak_mib": _peak_mib(fn)}
                sdpa_alive = us < 2e6
                del q, k, v
            except torch.OutOfMemoryError:
                sdpa_alive = False
                yield missing_row("sdpa_causal", "torch", "fwd", shape, "bf16", "out of GPU memory")
        torch.cuda.empty_cache()


__all__ = ["bench_long_context"]
