"""The benchmark registry, the roofline floor, and the JSON writer.

Each operation registers a function that yields rows: for every shape and
implementation it builds fresh random inputs, checks the result against the
vectorized version, times the call, and computes the roofline floor of the
shape (bytes over the measured HBM bandwidth, exponentials over 4.2e12/s,
FLOPs over the tensor-core rate; the largest of the three).

Chapters 3-9 add their kernels here as they land (issue: benchmark suite).
"""

from __future__ import annotations

import datetime
import json
import pathlib
import re
from typing import Callable, Iterator

import torch

import ssm_edu
from ssm_edu.numerics import rel_error, tolerance

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXP_PER_S = 4.2e12  # MUFU exponentials per second on an H100 SXM (the suite's assumed rate)
TENSOR_FLOP_S = 790e12  # dense bf16 tensor-core rate measured on the book's H100s

OPS: dict[str, Callable[["Context"], Iterator[dict]]] = {}


def register(name: str):
    def wrap(fn):
        OPS[name] = fn
        return fn

    return wrap


class Context:
    """What every benchmark needs: the device, the measured bandwidth, a timer."""

    def __init__(self):
        self.device = torch.device("cuda")
        self.hbm_bytes_s = measure_hbm_bandwidth()

    def time_us(self, fn) -> float:
        from triton.testing import do_bench

        return 1e3 * do_bench(fn, warmup=25, rep=100, return_mode="median")

    def floor_us(self, bytes_=0.0, exps=0.0, flops=0.0) -> float:
        return 1e6 * max(bytes_ / self.hbm_bytes_s, exps / EXP_PER_S, flops / TENSOR_FLOP_S)


def measure_hbm_bandwidth(n_bytes: int = 2 << 30) -> float:
    """Device-to-device copy of 2 GiB; bytes read plus bytes written, per second."""
    from triton.testing import do_bench

    src = torch.empty(n_bytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=100, return_mode="median")
    return 2 * n_bytes / (ms * 1e-3)


def checked(name: str, out, ref, dtype) -> None:
    err = rel_error(out, ref)
    if not err < tolerance(dtype) * 10:
        raise AssertionError(f"{name}: result differs from the vectorized version (relative error {err:.3g})")


@register("discretize_diag")
def bench_discretize_diag(ctx: Context):
    """ZOH for a diagonal system, elementwise: memory-bound (Λ, B in; Ā, B̄ out; complex64)."""
    for H, N in ((16, 64), (1024, 64), (8192, 256)):
        gen = torch.Generator(device=ctx.device).manual_seed(H)
        lam = torch.complex(-torch.rand(H, N, device=ctx.device, generator=gen), torch.randn(H, N, device=ctx.device, generator=gen))
        B = torch.randn(H, N, dtype=torch.complex64, device=ctx.device, generator=gen)
        dt = torch.rand(H, 1, device=ctx.device, generator=gen) * 0.1 + 1e-3
        ref = ssm_edu.discretize_diag(lam, B, dt, impl="vectorized")
        impls = {"vectorized": lambda: ssm_edu.discretize_diag(lam, B, dt, impl="vectorized")}
        if H * N <= 16 * 64:  # the naive loop launches a few kernels per mode: small sizes only
            impls["naive"] = lambda: ssm_edu.discretize_diag(lam, B, dt, impl="naive")
        for impl, fn in impls.items():
            checked(f"discretize_diag {impl}", fn()[1], ref[1], torch.float32)
            yield {
                "op": "discretize_diag", "impl": impl, "pass": "fwd", "shape": f"H{H} N{N}", "dtype": "c64",
                "median_us": ctx.time_us(fn), "floor_us": ctx.floor_us(bytes_=4 * H * N * 8, exps=H * N),
            }


@register("causal_conv")
def bench_causal_conv(ctx: Context):
    """Causal convolution of a long kernel, bf16: the Triton block-Toeplitz product against FFT.

    Floors: the direct method (triton) does about B*H*L² FLOPs (the triangle of
    B*H*L²/2 multiply-adds) on the tensor cores; the FFT methods count bytes
    only (u and K read once, y written once). The peer "torch" is plain
    torch.fft: rfft/irfft padded to 2L in float32, as an S4 layer does it.
    """
    B, H, L = 64, 768, 4096
    gen = torch.Generator(device=ctx.device).manual_seed(L)
    u = torch.randn(B, H, L, device=ctx.device, generator=gen).to(torch.bfloat16)
    decay = torch.exp(-torch.arange(L, device=ctx.device) / (L / 8))  # (L,) a kernel that fades over the sequence
    K = (torch.randn(H, L, device=ctx.device, generator=gen) * decay / (L / 8) ** 0.5).to(torch.bfloat16)

    def torch_fft():
        n = 2 * L
        return torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(K.float(), n=n), n=n)[..., :L].to(u.dtype)

    ref = torch_fft()
    impls = {
        "triton": lambda: ssm_edu.causal_conv(u, K, impl="triton"),
        "vectorized": lambda: ssm_edu.causal_conv(u, K, impl="vectorized"),
        "torch": torch_fft,
    }
    bytes_ = 2 * (2 * B * H * L + H * L)
    for impl, fn in impls.items():
        checked(f"causal_conv {impl}", fn(), ref, torch.bfloat16)
        flops = B * H * L * L if impl == "triton" else 0.0
        yield {
            "op": "causal_conv", "impl": impl, "pass": "fwd", "shape": f"B{B} H{H} L{L}", "dtype": "bf16",
            "median_us": ctx.time_us(fn), "floor_us": ctx.floor_us(bytes_=bytes_, flops=flops),
        }


def gpu_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run(ops, out: str | None = None) -> pathlib.Path:
    import triton

    ctx = Context()
    name = torch.cuda.get_device_name()
    results = []
    for op in ops:
        for row in OPS[op](ctx):
            row["fraction_of_floor"] = row["floor_us"] / row["median_us"]
            results.append(row)
            print(f"{row['op']:>18} {row['impl']:>10} {row['shape']:>14} {row['median_us']:10.1f} us  floor {row['floor_us']:8.1f} us  ({100 * row['fraction_of_floor']:.0f}%)")
    doc = {
        "device": name, "torch": torch.__version__, "triton": triton.__version__,
        "date": datetime.date.today().isoformat(), "hbm_tb_s": ctx.hbm_bytes_s / 1e12, "results": results,
    }
    path = pathlib.Path(out) if out else ROOT / "book" / "data" / "benchmarks" / f"{gpu_slug(name)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
