"""Benchmark rows of the selective SSMs (chapters 7-10) and their peers.

Every row builds fresh random inputs in the model's own ranges (Δ after a
softplus in [1e-3, 1e-1], A negative), checks our implementations against
the vectorized version, and times forward or forward plus backward. Peers are
checked too, but their error is recorded in the row (``peer_rel_error``)
rather than enforced: it documents that the two compute the same function.

Floors (``Context.floor_us``), per operation:

- selective_scan: bytes of u, Δ, y (b·d·L each) and B, C (b·n·L each) in the
  input dtype; one exponential per (b, d, t, n). Forward plus backward: twice
  the exponentials (the backward recomputes the states) and the gradients'
  bytes.
- selective_state_update: the state read and written once; the rest is small.
- ssd: x, y, B, C bytes; the chunked algorithm's tensor-core FLOPs.
- mamba3: x, y, B, C, θ bytes; FLOPs as for ssd, doubled for the two-term weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import ssm_edu

from . import peers
from .suite import Context, checked, missing_row, register

BYTES = {torch.bfloat16: 2, torch.float16: 2, torch.float32: 4}
NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32"}


def _rand(gen, *shape, device, lo=None, hi=None):
    x = torch.rand(*shape, device=device, generator=gen)
    return lo + (hi - lo) * x if lo is not None else x


def fwd_bwd(fn, inputs):
    """A closure that runs forward and backward with a fixed random output gradient."""
    out = fn()
    out = out[0] if isinstance(out, tuple) else out
    grad = torch.randn_like(out)

    def run():
        for t in inputs:
            t.grad = None
        y = fn()
        (y[0] if isinstance(y, tuple) else y).backward(grad)

    return run


def peer_row(ctx, row, fn, ref, inputs=None):
    """Time a peer's callable; record its error against our reference instead of enforcing it."""
    out = fn()
    out = out[0] if isinstance(out, tuple) else out
    row["peer_rel_error"] = float(ssm_edu.rel_error(out.float(), ref.float()))
    row["median_us"] = ctx.time_us(fwd_bwd(fn, inputs) if row["pass"] == "fwd+bwd" else fn)
    return row


# --------------------------------------------------------------------------- Mamba-1


def scan_inputs(ctx, b, d, L, n, dtype, requires_grad=False):
    gen = torch.Generator(device=ctx.device).manual_seed(b * d + L + n)
    dev = ctx.device
    u = torch.randn(b, d, L, device=dev, generator=gen).to(dtype)
    delta = _rand(gen, b, d, L, device=dev, lo=1e-3, hi=1e-1).to(dtype)  # Δ already positive: no softplus
    A = -torch.exp(torch.randn(d, n, device=dev, generator=gen) * 0.5)  # (d, n) float32, as in Mamba
    B = torch.randn(b, n, L, device=dev, generator=gen).to(dtype)
    C = torch.randn(b, n, L, device=dev, generator=gen).to(dtype)
    D = torch.randn(d, device=dev, generator=gen)
    ts = [u, delta, A, B, C, D]
    for t in ts:
        t.requires_grad_(requires_grad)
    return ts


def scan_floor(ctx, b, d, L, n, dtype, pass_):
    e = BYTES[dtype]
    io = e * (3 * b * d * L + 2 * b * n * L)
    if pass_ == "fwd":
        return ctx.floor_us(bytes_=io, exps=b * d * L * n)
    # backward reads u, Δ, B, C, dy and writes du, dΔ, dB, dC: about twice the forward's traffic
    return ctx.floor_us(bytes_=3 * io, exps=2 * b * d * L * n)


@register("selective_scan")
def bench_selective_scan(ctx: Context):
    """The goal shape (B8 D2048 L2048 N16, bf16), forward and forward plus backward, and a small shape with the loop."""
    for (b, d, L, n), dtype in (((8, 2048, 2048, 16), torch.bfloat16), ((1, 256, 512, 16), torch.float32)):
        shape = f"B{b} D{d} L{L} N{n}"
        if not ctx.wants(shape):
            continue
        small = b * d * L <= 1 << 17
        for pass_ in ("fwd", "fwd+bwd"):
            grad = pass_ == "fwd+bwd"
            u, delta, A, B, C, D = ts = scan_inputs(ctx, b, d, L, n, dtype, requires_grad=grad)
            floor = scan_floor(ctx, b, d, L, n, dtype, pass_)
            base = {"op": "selective_scan", "pass": pass_, "shape": shape, "dtype": NAMES[dtype], "floor_us": floor}
            with torch.no_grad():
                ref = ssm_edu.selective_scan(u, delta, A, B, C, D, impl="vectorized")
            impls = ["triton", "vectorized"] + (["naive"] if small else [])
            for impl in impls:
                fn = lambda impl=impl: ssm_edu.selective_scan(u, delta, A, B, C, D, impl=impl)
                with torch.no_grad():
                    checked(f"selective_scan {impl}", fn(), ref, dtype)
                yield base | {"impl": impl, "median_us": ctx.time_us(fwd_bwd(fn, ts) if grad else fn)}
            try:
                sscan = peers.selective_scan_fn()
                yield peer_row(ctx, base | {"impl": "mamba_ssm"}, lambda: sscan(u, delta, A, B, C, D), ref, ts)
            except peers.Missing as why:
                yield missing_row("selective_scan", "mamba_ssm", pass_, shape, NAMES[dtype], str(why))
            try:
                pscan = peers.pure_python("mambapy.pscan").pscan

                def mambapy():  # mambapy's selective scan: materialise exp(ΔA) and ΔBu, pscan, contract with C
                    dA = torch.exp(delta.float().transpose(1, 2).unsqueeze(-1) * A)  # (b, L, d, n)
                    BX = (delta * u).float().transpose(1, 2).unsqueeze(-1) * B.float().transpose(1, 2).unsqueeze(2)
                    hs = pscan(dA, BX)
                    y = (hs @ C.float().transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
                    return (y + D[:, None] * u.float()).to(u.dtype)

                yield peer_row(ctx, base | {"impl": "mambapy"}, mambapy, ref, ts)
            except peers.Missing as why:
                yield missing_row("selective_scan", "mambapy", pass_, shape, NAMES[dtype], str(why))


@register("selective_state_update")
def bench_state_update(ctx: Context):
    """One decoding step, Mamba-2's headed layout (Δ, A, D shared over P and N, as Mamba2.step passes them)."""
    b, h, p, n = 256, 80, 64, 128
    shape = f"B{b} H{h} P{p} N{n}"
    if not ctx.wants(shape):
        return
    gen = torch.Generator(device=ctx.device).manual_seed(7)
    dev = ctx.device
    state0 = torch.randn(b, h, p, n, device=dev, generator=gen)
    x = torch.randn(b, h, p, device=dev, generator=gen)
    dt = _rand(gen, b, h, device=dev, lo=-3.0, hi=0.0)[:, :, None].expand(b, h, p)  # softplus(dt + bias) inside
    A = (-torch.exp(torch.randn(h, device=dev, generator=gen)))[:, None, None].expand(h, p, n)
    B = torch.randn(b, 1, n, device=dev, generator=gen)
    C = torch.randn(b, 1, n, device=dev, generator=gen)
    D = torch.randn(h, device=dev, generator=gen)[:, None].expand(h, p)
    dt_bias = torch.randn(h, device=dev, generator=gen)[:, None].expand(h, p)
    args = (x, dt, A, B, C, D)
    kw = {"dt_bias": dt_bias, "dt_softplus": True}
    floor = ctx.floor_us(bytes_=2 * 4 * b * h * p * n)
    base = {"op": "selective_state_update", "pass": "fwd", "shape": shape, "dtype": "fp32", "floor_us": floor}
    ref = ssm_edu.selective_state_update(state0.clone(), *args, **kw, impl="vectorized")
    for impl in ("triton", "vectorized"):
        state = state0.clone()
        checked(f"selective_state_update {impl}", ssm_edu.selective_state_update(state, *args, **kw, impl=impl), ref, torch.float32)
        yield base | {"impl": impl, "median_us": ctx.time_us(lambda: ssm_edu.selective_state_update(state, *args, **kw, impl=impl))}
    try:
        ssu = peers.mamba_ssm("ops.triton.selective_state_update").selective_state_update
        state = state0.clone()
        yield peer_row(ctx, base | {"impl": "mamba_ssm"}, lambda: ssu(state, *args, **kw), ref)
    except peers.Missing as why:
        yield missing_row("selective_state_update", "mamba_ssm", "fwd", shape, "fp32", str(why))


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
                ref_noD = ref - (D[:, None] * x).to(ref.dtype)  # fla has no D skip
                yield peer_row(ctx, base | {"impl": "fla"}, lambda: gla(q, k, v, g=gate, scale=1.0)[0], ref_noD, [q, k, v])
            except peers.Missing as why:
                yield missing_row("ssd", "fla", pass_, shape, "bf16", str(why))


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
            u, delta, A, B, C, D = scan_inputs(ctx, 1, d, L, n, torch.bfloat16)
            fn = lambda: ssm_edu.selective_scan(u, delta, A, B, C, D, impl="triton")
            yield {"op": "selective_scan", "impl": "triton", "pass": "fwd", "shape": shape, "dtype": "bf16",
                   "median_us": ctx.time_us(fn), "floor_us": scan_floor(ctx, 1, d, L, n, torch.bfloat16, "fwd"),
                   "peak_mib": _peak_mib(fn)}
            del u, delta, B, C
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


__all__ = ["bench_selective_scan", "bench_state_update", "bench_ssd", "bench_mamba3", "bench_long_context"]
