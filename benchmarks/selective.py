"""Benchmark rows of Mamba-1 (chapter 7): the selective scan and the decoding step, and their peers.

Every row builds fresh random inputs in the model's own ranges (Δ after a
softplus in [1e-3, 1e-1], A negative), checks our implementations against
the vectorized version, and times forward or forward plus backward. Peers are
checked too, but their error is recorded in the row (``peer_rel_error``)
rather than enforced: it documents that the two compute the same function.

Floors (``Context.floor_us``), per operation:

- selective_scan, forward: the bytes of u, Δ, z, y (b·d·L each) and B, C
  (b·n·L each) in the input dtype, read or written once; one exponential
  per (b, d, t, n), exp(Δ_t A), at the H100's exponential rate. At the
  goal shape B8 D2048 L2048 N16 bf16: 270 MB (90 µs at 3.0 TB/s) and
  537 M exponentials (128 µs): the exponentials bind.
- selective_scan, forward plus backward: the forward's bytes and
  exponentials, plus the backward's: it reads u, Δ, z, dy (b·d·L each) and
  B, C, writes du, dΔ, dz (b·d·L each) and dB, dC (b·n·L each), and
  recomputes the states, another exponential per (b, d, t, n) (their
  adjoint needs no new exponential: the decays are reused). So
  2·(11·b·d·L + 6·b·n·L) bytes and 2·b·d·L·n exponentials; what an
  implementation stores between the passes (our checkpoints, (b, d, n,
  L/8) in float32) is not counted. At the goal shape: 741 MB (245 µs) and
  1074 M exponentials (256 µs): the floor is 256 µs.
- selective_state_update: the state read and written once; the rest is small.
"""

from __future__ import annotations

import torch

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
    """The goal's inputs: u, Δ, B, C, z in ``dtype``; A, D, delta_bias in float32 (as Mamba keeps them);
    softplus(Δ + delta_bias) in about [5e-3, 0.2]."""
    gen = torch.Generator(device=ctx.device).manual_seed(b * d + L + n)
    dev = ctx.device
    u = torch.randn(b, d, L, device=dev, generator=gen).to(dtype)
    delta = (0.5 * torch.randn(b, d, L, device=dev, generator=gen) - 3.0).to(dtype)
    A = -torch.exp(torch.randn(d, n, device=dev, generator=gen) * 0.5)  # (d, n) float32, as in Mamba
    B = torch.randn(b, n, L, device=dev, generator=gen).to(dtype)
    C = torch.randn(b, n, L, device=dev, generator=gen).to(dtype)
    D = torch.randn(d, device=dev, generator=gen)
    z = torch.randn(b, d, L, device=dev, generator=gen).to(dtype)
    bias = 0.1 * torch.randn(d, device=dev, generator=gen)
    ts = [u, delta, A, B, C, D, z, bias]
    for t in ts:
        t.requires_grad_(requires_grad)
    return ts


def scan_floor(ctx, b, d, L, n, dtype, pass_):
    """The module docstring's floors."""
    e = BYTES[dtype]
    if pass_ == "fwd":
        return ctx.floor_us(bytes_=e * (4 * b * d * L + 2 * b * n * L), exps=b * d * L * n)
    return ctx.floor_us(bytes_=e * (11 * b * d * L + 6 * b * n * L), exps=2 * b * d * L * n)


@register("selective_scan")
def bench_selective_scan(ctx: Context):
    """The goal shape (B8 D2048 L2048 N16, bf16, D, z, delta_bias, softplus), forward and forward plus backward,
    and a small float32 shape with every form (the loop included). The vectorized form keeps every state of the
    sequence, (b, d, n, L) per tensor (2.1 GB each at the goal shape); if the GPU runs out of memory, a row
    says so."""
    for (b, d, L, n), dtype in (((8, 2048, 2048, 16), torch.bfloat16), ((1, 256, 512, 16), torch.float32)):
        shape = f"B{b} D{d} L{L} N{n}"
        if not ctx.wants(shape):
            continue
        small = b * d * L <= 1 << 17
        for pass_ in ("fwd", "fwd+bwd"):
            grad = pass_ == "fwd+bwd"
            ts = scan_inputs(ctx, b, d, L, n, dtype, requires_grad=grad)
            u, delta, A, B, C, D, z, bias = ts
            kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True)
            floor = scan_floor(ctx, b, d, L, n, dtype, pass_)
            base = {"op": "selective_scan", "pass": pass_, "shape": shape, "dtype": NAMES[dtype], "floor_us": floor}
            with torch.no_grad():
                ref = torch.cat([ssm_edu.selective_scan_chunked(*(x[i:i + 1].float() for x in (u, delta)), A,
                                                                *(x[i:i + 1].float() for x in (B, C)), D=D,
                                                                z=z[i:i + 1].float(), delta_bias=bias,
                                                                delta_softplus=True) for i in range(b)])
            impls = ["triton", "chunked", "vectorized"] + (["naive"] if small else [])
            for impl in impls:
                fn = lambda impl=impl: ssm_edu.selective_scan(u, delta, A, B, C, **kw, impl=impl)
                try:
                    with torch.no_grad():
                        checked(f"selective_scan {impl}", fn(), ref, dtype)
                    yield base | {"impl": impl, "median_us": ctx.time_us(fwd_bwd(fn, ts) if grad else fn)}
                except torch.OutOfMemoryError as why:  # the vectorized form keeps (b, d, n, L) tensors
                    torch.cuda.empty_cache()
                    yield missing_row("selective_scan", impl, pass_, shape, NAMES[dtype],
                                      f"out of GPU memory: {str(why).splitlines()[0][:120]}")
            try:
                sscan = peers.selective_scan_fn()
                yield peer_row(ctx, base | {"impl": "mamba_ssm"}, lambda: sscan(u, delta, A, B, C, D, z, bias,
                                                                               delta_softplus=True), ref, ts)
            except peers.Missing as why:
                yield missing_row("selective_scan", "mamba_ssm", pass_, shape, NAMES[dtype], str(why))
            try:
                pscan = peers.pure_python("mambapy.pscan").pscan

                def mambapy():  # mambapy's selective scan: materialise exp(ΔA) and ΔBu, pscan, contract with C
                    dt = torch.nn.functional.softplus(delta.float() + bias[:, None]).transpose(1, 2)  # (b, L, d)
                    dA = torch.exp(dt.unsqueeze(-1) * A)  # (b, L, d, n)
                    BX = (dt * u.float().transpose(1, 2)).unsqueeze(-1) * B.float().transpose(1, 2).unsqueeze(2)
                    hs = pscan(dA, BX)
                    y = (hs @ C.float().transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
                    y = (y + D[:, None] * u.float()) * torch.nn.functional.silu(z.float())
                    return y.to(u.dtype)

                if small or not grad:
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


__all__ = ["bench_selective_scan", "bench_state_update"]
