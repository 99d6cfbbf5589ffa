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
import time
from typing import Callable, Iterator

import torch

import ssm_edu
from ssm_edu.numerics import rel_error, tolerance

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXP_PER_S = 4.2e12  # MUFU exponentials per second on an H100 SXM (the suite's assumed rate)
TENSOR_FLOP_S = 790e12  # dense bf16 tensor-core rate measured on the book's H100s
CORE_FLOP_S = 67e12  # fp32 rate of the CUDA cores (FMA counted as 2), H100 SXM datasheet

OPS: dict[str, Callable[["Context"], Iterator[dict]]] = {}


def register(name: str):
    def wrap(fn):
        OPS[name] = fn
        return fn

    return wrap


class Context:
    """What every benchmark needs: the device, the measured bandwidth, a timer."""

    def __init__(self, shapes: list[str] | None = None):
        self.device = torch.device("cuda")
        self.hbm_bytes_s = measure_hbm_bandwidth()
        self.shapes = shapes

    def wants(self, shape: str) -> bool:
        """Whether the run was asked for this shape string (all shapes unless ``--shape`` was given)."""
        return not self.shapes or shape in self.shapes

    def time_us(self, fn) -> float:
        """The median of ``triton.testing.do_bench``; a call slower than 0.2 s is timed three times instead.

        (do_bench first runs a slow call five times to estimate it, then warms up and repeats: half a
        minute for a naive loop of 4 s, which tells nothing the median of three calls does not.)
        """
        from triton.testing import do_bench

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn()  # compiles what it has to
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if start.elapsed_time(end) > 200:
            times = []
            for _ in range(3):
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            return 1e3 * sorted(times)[1]
        return 1e3 * do_bench(fn, warmup=25, rep=100, return_mode="median")

    def floor_us(self, bytes_=0.0, exps=0.0, flops=0.0, core_flops=0.0) -> float:
        """The roofline floor: the slowest of memory traffic, exponentials and arithmetic.

        ``flops`` run on the tensor cores; ``core_flops`` are elementwise
        arithmetic that cannot use them (complex division, say).
        """
        return 1e6 * max(bytes_ / self.hbm_bytes_s, exps / EXP_PER_S, flops / TENSOR_FLOP_S, core_flops / CORE_FLOP_S)


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


@register("cauchy")
def bench_cauchy(ctx: Context):
    """S4's Cauchy product over the L roots of unity, complex64.

    Floor: about 16 CUDA-core FLOPs per (h, l, n) term (a complex subtraction,
    a complex division written as a multiply by the conjugate over |d|², an
    accumulate); the bytes (v, w in, out written) are small beside them.
    """
    for H, N, L in ((16, 32, 256), (768, 64, 4096)):
        shape = f"H{H} N{N} L{L}"
        if not ctx.wants(shape):
            continue
        gen = torch.Generator(device=ctx.device).manual_seed(L)
        v = torch.randn(H, N, dtype=torch.complex64, device=ctx.device, generator=gen)
        w = torch.complex(-0.5 * torch.ones(H, N, device=ctx.device), torch.randn(H, N, device=ctx.device, generator=gen) * N)
        z = torch.exp(2j * torch.pi * torch.arange(L, device=ctx.device) / L).to(torch.complex64)
        ref = ssm_edu.cauchy(v, z, w, impl="vectorized")
        impls = {"triton": "triton", "vectorized": "vectorized"} | ({"naive": "naive"} if H * L <= 4096 else {})
        for impl in impls:
            fn = lambda impl=impl: ssm_edu.cauchy(v, z, w, impl=impl)
            checked(f"cauchy {impl}", fn(), ref, torch.float32)
            yield {
                "op": "cauchy", "impl": impl, "pass": "fwd", "shape": shape, "dtype": "c64",
                "median_us": ctx.time_us(fn),
                "floor_us": ctx.floor_us(bytes_=8 * (2 * H * N + L + H * L), core_flops=16 * H * N * L),
            }


@register("linear_scan")
def bench_linear_scan(ctx: Context):
    """h_t = a_t h_{t-1} + b_t along the last axis, float32: memory-bound (a, b in, h out)."""
    for R, L in ((64, 1024), (16384, 4096)):
        shape = f"R{R} L{L}"
        if not ctx.wants(shape):
            continue
        gen = torch.Generator(device=ctx.device).manual_seed(R)
        a = 0.9 + 0.1 * torch.rand(R, L, device=ctx.device, generator=gen)
        b = torch.randn(R, L, device=ctx.device, generator=gen)
        ref = ssm_edu.linear_scan(a, b, impl="vectorized")
        impls = ["triton", "vectorized"] + (["naive"] if R * L <= 1 << 16 else [])
        for impl in impls:
            fn = lambda impl=impl: ssm_edu.linear_scan(a, b, impl=impl)
            checked(f"linear_scan {impl}", fn(), ref, torch.float32)
            yield {
                "op": "linear_scan", "impl": impl, "pass": "fwd", "shape": shape, "dtype": "fp32",
                "median_us": ctx.time_us(fn), "floor_us": ctx.floor_us(bytes_=3 * 4 * R * L),
            }


def missing_row(op: str, impl: str, pass_: str, shape: str, dtype: str, why: str) -> dict:
    """A peer that is not available: the row says so, with no time."""
    print(f"{op:>22} {impl:>10} {shape:>26}  missing: {why}")
    return {"op": op, "impl": impl, "pass": pass_, "shape": shape, "dtype": dtype, "median_us": None, "floor_us": None, "missing": why}


def gpu_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run(ops, out: str | None = None, shapes: list[str] | None = None) -> pathlib.Path:
    """Time ``ops`` and write the JSON.

    Rows of the operations timed now replace that file's rows of the same
    operation (and shape, when ``shapes`` narrows the run); rows of other
    operations are kept, each with the date, device and versions it was
    measured with, so the file can be refreshed one operation at a time.
    """
    import triton

    ctx = Context(shapes)
    name = torch.cuda.get_device_name()
    stamp = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "triton": triton.__version__}
    results = []
    path = pathlib.Path(out) if out else ROOT / "book" / "data" / "benchmarks" / f"{gpu_slug(name)}.json"
    failed = []

    def write(incomplete=()):
        # merging is idempotent: written after every row, so that a command cut by its time limit keeps
        # every row it measured; rows of an operation still running replace only the rows they re-measure
        doc = {"device": name, **stamp, "hbm_tb_s": ctx.hbm_bytes_s / 1e12, "results": results,
               "incomplete_ops": list(incomplete)}
        merge(doc, path, replace_shapes_only=bool(shapes), mark_incomplete=True)

    for op in ops:
        t0 = time.perf_counter()
        try:
            for row in OPS[op](ctx):
                if row.get("median_us") is not None:
                    row["fraction_of_floor"] = row["floor_us"] / row["median_us"]
                    print(f"{row['op']:>22} {row['impl']:>10} {row['pass']:>7} {row['shape']:>26} {row['median_us']:10.1f} us  floor {row['floor_us']:8.1f} us  ({100 * row['fraction_of_floor']:.0f}%)", flush=True)
                results.append(row)
                write(incomplete=[op])
        except Exception:  # one operation's failure must not cost the others their rows: report it and go on
            import traceback

            traceback.print_exc()
            failed.append(op)
            print(f"== {op}: FAILED after {time.perf_counter() - t0:.0f} s (rows before the failure are kept)", flush=True)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        write()  # the operation is complete (or failed): its rows replace all of its earlier ones
        print(f"== {op}: {time.perf_counter() - t0:.0f} s", flush=True)
    if failed:
        print(f"operations that failed: {', '.join(failed)}", flush=True)
    return path


def row_key(r: dict) -> tuple:
    """What identifies a measurement: operation, shape, pass, implementation."""
    return r["op"], r["shape"], r.get("pass"), r.get("impl")


def merge(doc: dict, path: pathlib.Path, replace_shapes_only: bool = False, mark_incomplete: bool = False) -> None:
    """Write ``doc``'s rows into the JSON at ``path``, replacing the rows they re-measure.

    A row is replaced when the new document has a row of the same operation
    (and the same shape, with ``replace_shapes_only``); the others are kept
    with their own date and versions, so the file can be refreshed one
    operation at a time, or from a JSON measured on another machine. For the
    operations that ``doc["incomplete_ops"]`` names (a run cut while timing
    them), only the rows with the same operation, shape, pass and
    implementation are replaced: the rows it did not reach are kept.
    ``mark_incomplete`` (the suite's own output) keeps that list in the file
    written, so that merging the file elsewhere later treats those rows alike.
    """
    stamp = {k: doc[k] for k in ("date", "torch", "triton") if k in doc}
    new = [stamp | r for r in doc["results"]]
    partial = set(doc.get("incomplete_ops", ()))
    ops = {r["op"] for r in new} - partial
    shapes = {(r["op"], r["shape"]) for r in new if r["op"] not in partial}
    remeasured = {row_key(r) for r in new}
    kept = []
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("device") != doc["device"]:
            raise ValueError(f"{path} holds results of {old.get('device')!r}, not {doc['device']!r}")
        for r in old.get("results", []):
            if r["op"] in partial:
                replaced = row_key(r) in remeasured
            else:
                replaced = (r["op"], r["shape"]) in shapes if replace_shapes_only else r["op"] in ops
            if not replaced:
                kept.append({k: old[k] for k in ("date", "torch", "triton") if k in old} | r)
    out = {k: doc[k] for k in ("device", "torch", "triton", "date", "hbm_tb_s")} | {"results": kept + new}
    if mark_incomplete and partial:
        out["incomplete_ops"] = sorted(partial)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


from . import selective  # noqa: E402,F401  (registers the selective-SSM rows; it imports this module's helpers)
from . import ssd, mamba3, long_context  # noqa: E402,F401  (chapters 8, 9, 10)
from . import decode  # noqa: E402,F401  (registers the decoding rows of chapter 10)
