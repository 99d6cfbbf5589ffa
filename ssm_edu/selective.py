"""Mamba-1's selective scan and its decoding step (chapter 7).

Symbols -> code:  x_t (the input) -> u,  Δ_t -> delta (dt in the decoding
step),  A -> A,  B_t, C_t -> B, C,  D (the skip) -> D,  the gate -> z,
h_t -> the state.   Shapes: b batch, D channels, L length, N state size per
channel, G groups (channel d reads group d // (D / G)); in the decoding
step's headed layout (Mamba-2) H heads of P channels each.

    Δ_t = softplus(delta_t + delta_bias)          (each step optional)
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t      h: (b, D, N), h_{-1} = 0
    y_t = <h_t, C_t> + D x_t,   then   y_t · silu(z_t)

Per channel d the state is N numbers h[d, :] with a diagonal decay
exp(Δ_t A[d, :]); the input enters through the vector B_t (shared by the
channels of a group) scaled by Δ_t x_t, and the output reads the state
through C_t. Δ_t, B_t and C_t depend on the input (they are computed from it
by the Mamba block), which is what "selective" means: the system is linear
in h but time-varying, so there is no convolution kernel, only a scan. Note
B̄ = Δ B (exponential-Euler), not the exact ZOH B̄ of chapter 2.

* ``selective_scan_naive``: the loop over t (the specification).
* ``selective_scan_vectorized``: all the steps (exp(Δ_t A), Δ_t B_t x_t) of
  shape (b, D, N, L) at once, then the parallel scan of chapter 6
  (``linear_scan(impl="vectorized")``): log-depth, but (b, D, N, L) in memory.
* ``selective_scan_chunked``: the same, chunk by chunk, carrying the state:
  memory (b, D, N, chunk).
* ``triton``: ``ssm_edu.kernels.selective``: the state stays on chip, only
  the inputs and y touch global memory.

``selective_state_update`` is one step of the same recurrence on a stored
state (decoding, one token at a time), with mamba_ssm's semantics; it updates
the state in place.
"""

from __future__ import annotations

import json
import pathlib

import torch
import torch.nn.functional as F

from ._dispatch import dispatch, float32_kernel
from ._validate import Shapes, check_dtype, check_same_device
from .results import newest_log
from .scan import linear_scan

__all__ = [
    "selective_scan",
    "selective_scan_naive",
    "selective_scan_vectorized",
    "selective_scan_chunked",
    "selective_state_update",
    "selective_state_update_naive",
    "selective_state_update_vectorized",
    "sweep_log",
    "compile_table",
    "ladder",
    "plot_ladder",
]

_REAL = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _groups(X, D):
    """B or C (b, N, L) or (b, G, N, L) -> (b, D, N, L): channel d reads group d // (D / G)."""
    if X.dim() == 3:
        return X.unsqueeze(1)  # (b, 1, N, L): broadcasts over the channels
    return X.repeat_interleave(D // X.shape[1], dim=1)  # (b, D, N, L)


def _step_sizes(delta, delta_bias, delta_softplus):
    """Δ = softplus(delta + delta_bias), each part optional. (b, D, L)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _finish(y, u, D, z):
    """y + D x, then the gate y · silu(z). All (b, D, L)."""
    if D is not None:
        y = y + D[:, None] * u
    return y if z is None else y * F.silu(z)


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """The specification: one step of the recurrence per loop iteration.

    u, delta, z (b, D, L); A (D, N); B, C (b, N, L) or (b, G, N, L); D,
    delta_bias (D,) -> y (b, D, L) [, h_{L-1} (b, D, N)]. Computes in the
    inputs' dtype (float64 gives the reference).
    """
    dt = _step_sizes(delta, delta_bias, delta_softplus)  # (b, D, L)
    B, C = _groups(B, A.shape[0]), _groups(C, A.shape[0])  # (b, D or 1, N, L)
    h = u.new_zeros(u.shape[0], A.shape[0], A.shape[1])  # (b, D, N)
    ys = []
    for t in range(u.shape[-1]):
        dt_t = dt[:, :, t, None]  # (b, D, 1)
        h = torch.exp(dt_t * A) * h + dt_t * B[..., t] * u[:, :, t, None]  # (b, D, N)
        ys.append((h * C[..., t]).sum(-1))  # <h_t, C_t>: (b, D)
    y = _finish(torch.stack(ys, dim=-1), u, D, z)
    return (y, h) if return_last_state else y


def _scan_steps(u, dt, A, B):
    """The scan's inputs: decays exp(Δ_t A) and inputs Δ_t B_t x_t, both (b, D, N, L)."""
    a = torch.exp(dt[:, :, None, :] * A[None, :, :, None])  # (b, D, N, L)
    b = (dt * u)[:, :, None, :] * B  # (b, D, N, L)
    return a, b


def selective_scan_vectorized(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              return_last_state=False):
    """All steps at once, then a parallel (log-depth) scan over t.

    Same arguments as ``selective_scan_naive``. Materialises the steps and the
    states, (b, D, N, L) each: fine on a CPU at the book's sizes, the reason
    for the chunked form and the kernel at a language model's.
    """
    dt = _step_sizes(delta, delta_bias, delta_softplus)  # (b, D, L)
    B, C = _groups(B, A.shape[0]), _groups(C, A.shape[0])
    a, b = _scan_steps(u, dt, A, B)  # (b, D, N, L)
    h = linear_scan(a, b, impl="vectorized")  # (b, D, N, L): every h_t
    y = _finish((h * C).sum(2), u, D, z)  # (b, D, L)
    return (y, h[..., -1]) if return_last_state else y


def _chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
             chunk=256):
    """The body of ``selective_scan_chunked`` (no checks)."""
    dt = _step_sizes(delta, delta_bias, delta_softplus)  # (b, D, L)
    B, C = _groups(B, A.shape[0]), _groups(C, A.shape[0])
    h, ys = None, []  # h: (b, D, N), the state at the end of the previous chunk
    for s in range(0, u.shape[-1], chunk):
        part = slice(s, s + chunk)
        a, b = _scan_steps(u[..., part], dt[..., part], A, B[..., part])  # (b, D, N, chunk)
        hs = linear_scan(a, b, h, impl="vectorized")  # (b, D, N, chunk)
        ys.append((hs * C[..., part]).sum(2))  # (b, D, chunk)
        h = hs[..., -1]
    y = _finish(torch.cat(ys, dim=-1), u, D, z)
    return (y, h) if return_last_state else y


def _check_scan(op, u, delta, A, B, C, D, z, delta_bias):
    shapes = Shapes(op)
    shapes.check("u", u, "batch D L")
    shapes.check("delta", delta, "batch D L")
    shapes.nonempty("L")
    shapes.check("A", A, "D N")
    for name, X in (("B", B), ("C", C)):
        if shapes.check(name, X, "batch N L", "batch G N L") == "batch G N L" and shapes["D"] % X.shape[1]:
            raise ValueError(f"{op}: the number of groups G of {name} must divide D = {shapes['D']}; "
                             f"got {name} of shape {tuple(X.shape)} (G = {X.shape[1]})")
    for name, x, spec in (("D", D, "D"), ("z", z, "batch D L"), ("delta_bias", delta_bias, "D")):
        if x is not None:
            shapes.check(name, x, spec)
    check_same_device(op, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    for name, x in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if x is not None:
            check_dtype(op, name, x, _REAL)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, impl="auto"):
    """Mamba-1's selective scan (API.md; mamba_ssm's ``selective_scan_fn``).

    Args:
        u: (batch, D, L) the input x.
        delta: (batch, D, L) the step Δ before bias and softplus.
        A: (D, N) real (negative for a stable system).
        B, C: (batch, N, L), or grouped (batch, G, N, L) with D % G == 0.
        D: (D,) skip connection, or None.
        z: (batch, D, L) gate (y · silu(z)), or None.
        delta_bias: (D,) added to delta, or None.
        delta_softplus: apply softplus to delta (+ delta_bias).
        return_last_state: also return h_{L-1} (batch, D, N).
        impl: ``"naive"`` (loop over t), ``"vectorized"`` (parallel scan,
            (batch, D, N, L) in memory), ``"chunked"`` (the same in chunks of
            256 steps; ``selective_scan_chunked`` takes other sizes), ``"triton"`` (kernel; float32, bfloat16, float16) or
            ``"auto"`` (triton for CUDA tensors below float64, else vectorized).
    Returns:
        y (batch, D, L) in u's dtype [, last_state (batch, D, N) in u's dtype:
        API.md's rule; mamba_ssm returns it in float32].
        Computed in float32 (float64 when any input is float64).
        Differentiable in every tensor argument, with every impl.
    """
    op = "selective_scan"
    # shapes and dtypes first (the Triton kernel checks its device when called, after them)
    _check_scan(op, u, delta, A, B, C, D, z, delta_bias)
    fn = dispatch(op, impl, (u, delta, A, B, C), naive=selective_scan_naive, vectorized=selective_scan_vectorized,
                  chunked=_chunked, triton="selective:selective_scan_triton")
    return _run(op, fn, impl, (u, delta, A, B, C, D, z, delta_bias), delta_softplus, return_last_state)


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, chunk=256):
    """The vectorized form on chunks of ``chunk`` steps, carrying h between chunks.

    Same arguments and results as ``selective_scan`` (without ``impl``), plus
    ``chunk`` (an int >= 1; the result does not depend on it). Memory
    (batch, D, N, chunk) instead of (batch, D, N, L): the structure of the
    Triton kernel, with PyTorch doing each chunk.
    """
    op = "selective_scan_chunked"
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"{op}: chunk must be an int >= 1; got {chunk!r}")
    _check_scan(op, u, delta, A, B, C, D, z, delta_bias)
    return _run(op, lambda *a, **k: _chunked(*a, **k, chunk=chunk), "chunked", (u, delta, A, B, C, D, z, delta_bias),
                delta_softplus, return_last_state)


def _run(op, fn, impl, args, delta_softplus, return_last_state):
    """Inputs already checked (``_check_scan``): pick the working dtype, run ``fn``, return in u's dtype."""
    double = any(x is not None and x.dtype == torch.float64 for x in args)
    fn = float32_kernel(op, impl, fn, double=double, what="float64 inputs", fallback=selective_scan_vectorized)
    if getattr(fn, "__name__", "") == "selective_scan_triton":
        return fn(*args, delta_softplus=delta_softplus, return_last_state=return_last_state)
    work = torch.float64 if double else torch.float32
    out = fn(*(None if x is None else x.to(work) for x in args), delta_softplus=delta_softplus,
             return_last_state=return_last_state)
    u = args[0]
    if return_last_state:
        return out[0].to(u.dtype), out[1].to(u.dtype)
    return out.to(u.dtype)


# ----------------------------------------------------------------------------
# Decoding: one step on a stored state
# ----------------------------------------------------------------------------


def selective_state_update_naive(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One step, head by head and batch element by batch element (the specification).

    Headed layout only (the public function reshapes the other one):
    state (b, H, P, N); x, dt, z (b, H, P); A (H, P, N); B, C (b, G, N);
    D, dt_bias (H, P). Updates ``state`` in place and returns out (b, H, P).
    """
    batch, H = x.shape[:2]
    heads_per_group = H // B.shape[1]
    out = torch.empty_like(x)
    for b in range(batch):
        for h in range(H):
            g = h // heads_per_group
            step = dt[b, h] if dt_bias is None else dt[b, h] + dt_bias[h]  # (P,)
            if dt_softplus:
                step = F.softplus(step)
            new = torch.exp(step[:, None] * A[h]) * state[b, h] + (step * x[b, h])[:, None] * B[b, g]  # (P, N)
            state[b, h] = new
            y = new @ C[b, g]  # (P,)
            if D is not None:
                y = y + D[h] * x[b, h]
            out[b, h] = y if z is None else y * F.silu(z[b, h])
    return out


def selective_state_update_vectorized(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One step for every batch element and head at once. Same arguments as the naive form."""
    H, G = x.shape[1], B.shape[1]
    step = dt if dt_bias is None else dt + dt_bias  # (b, H, P)
    if dt_softplus:
        step = F.softplus(step)
    B = B.repeat_interleave(H // G, dim=1)[:, :, None, :]  # (b, H, 1, N)
    C = C.repeat_interleave(H // G, dim=1)[:, :, None, :]
    new = torch.exp(step[..., None] * A) * state + (step * x)[..., None] * B  # (b, H, P, N)
    state.copy_(new)
    y = (new * C).sum(-1)  # (b, H, P)
    if D is not None:
        y = y + D * x
    return y if z is None else y * F.silu(z)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, impl="auto"):
    """One decoding step of the selective SSM; ``state`` is updated in place.

    mamba_ssm's ``selective_state_update``, in either layout:

    ==========  ========================  =============================
    argument    Mamba-1 (channels)        headed (Mamba-2)
    ==========  ========================  =============================
    state       (batch, D, N)             (batch, H, P, N)
    x, dt, z    (batch, D)                (batch, H, P)
    A           (D, N)                    (H, P, N)
    B, C        (batch, N), (batch, G, N) (batch, N), (batch, G, N)
    D, dt_bias  (D,)                      (H, P)
    ==========  ========================  =============================

    With dt' = softplus(dt + dt_bias) (each part optional):
    state <- exp(dt' A) state + dt' x B;  out = <state, C> + D x, times silu(z).
    Groups: channel d reads group d // (D / G); head h reads group h // (H / G).
    In Mamba-2, dt and A are one number per head, passed broadcast (stride 0)
    over P and N: ``A[:, None, None].expand(H, P, N)``.

    ``impl``: ``"naive"``, ``"vectorized"``, ``"triton"`` or ``"auto"``.
    Returns out in x's dtype; the state keeps its own dtype (float32 or
    bfloat16, say) and the step is computed in float32 (float64 for a float64
    state). Feeding a sequence through it token by token reproduces
    ``selective_scan`` (and ``ssd``). Not differentiable (it writes in place).
    """
    op = "selective_state_update"
    shapes = Shapes(op)  # shapes and dtypes first
    headed = shapes.check("state", state, "batch D N", "batch H P N") == "batch H P N"
    chan = "batch H P" if headed else "batch D"
    par = "H P" if headed else "D"
    shapes.check("x", x, chan)
    shapes.check("dt", dt, chan)
    shapes.check("A", A, "H P N" if headed else "D N")
    for name, X in (("B", B), ("C", C)):
        if shapes.check(name, X, "batch N", "batch G N") == "batch G N":
            heads = shapes["H"] if headed else shapes["D"]
            if heads % X.shape[1]:
                raise ValueError(f"{op}: the number of groups G of {name} must divide "
                                 f"{'H' if headed else 'D'} = {heads}; got {name} of shape {tuple(X.shape)}")
    for name, t, spec in (("D", D, par), ("z", z, chan), ("dt_bias", dt_bias, par)):
        if t is not None:
            shapes.check(name, t, spec)
    check_same_device(op, state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("dt_bias", dt_bias)):
        if t is not None:
            check_dtype(op, name, t, _REAL)
    fn = dispatch(op, impl, (state, x), naive=selective_state_update_naive,
                  vectorized=selective_state_update_vectorized,
                  triton="state_update:selective_state_update_triton")
    fn = float32_kernel(op, impl, fn, double=state.dtype == torch.float64, what="a float64 state",
                        fallback=selective_state_update_vectorized)
    if fn.__name__ == "selective_state_update_triton":
        return fn(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    # one layout for the tiers: (b, D, N) is the headed layout with one head per group
    G = max(X.shape[1] if X.dim() == 3 else 1 for X in (B, C))
    Bg, Cg = (X if X.dim() == 3 else X.unsqueeze(1).expand(-1, G, -1) for X in (B, C))  # (b, G, N)
    if headed:
        view = dict(state=state, x=x, dt=dt, A=A, D=D, z=z, dt_bias=dt_bias)
    else:  # splitting a dimension is always a view: writes reach ``state``
        split = lambda t, dim: None if t is None else t.unflatten(dim, (G, -1))  # noqa: E731
        view = dict(state=split(state, 1), x=split(x, 1), dt=split(dt, 1), A=split(A, 0), D=split(D, 0),
                    z=split(z, 1), dt_bias=split(dt_bias, 0))
    work = torch.float64 if state.dtype == torch.float64 else torch.float32
    target = view.pop("state")
    st = target.to(work)  # a copy unless the state already has the working dtype (then: itself)
    cast = {k: (None if v is None else v.to(work)) for k, v in view.items()}
    out = fn(st, cast["x"], cast["dt"], cast["A"], Bg.to(work), Cg.to(work), D=cast["D"], z=cast["z"],
             dt_bias=cast["dt_bias"], dt_softplus=dt_softplus)
    if st is not target:
        target.copy_(st)
    return out.reshape(x.shape).to(x.dtype)


# ----------------------------------------------------------------------------
# Chapter 7's ladder: from the first kernel to the fast one, measured
# ----------------------------------------------------------------------------

_LOGS = pathlib.Path(__file__).resolve().parents[1] / "book" / "data" / "benchmarks" / "logs"


def sweep_log(device: str | None = None) -> dict | None:
    """The committed log of ``benchmarks/sweep_selective.py`` on a GPU, or None where there is none.

    ``book/data/benchmarks/logs/sweep_selective-<gpu>.json`` (the newest if there are several; ``device``
    picks one by name). Its rows: one per config and shape, with ``median_us``, ``floor_us``,
    ``fraction_of_floor`` and the check's ``rel_error``; rungs of the ladder carry ``rung``, ``change`` and
    ``reason``. Dry runs (made on a CPU, in the interpreter) never count.
    """
    return newest_log(_LOGS, "sweep_selective-*.json", lambda doc: not doc.get("dry_run"), device)


def compile_table() -> dict | None:
    """``benchmarks/compile_selective.py``'s offline sm_90 compile of the ladder's kernels and the backward
    kernel's configs (registers, SASS instructions and MUFU operations per element), or None."""
    found = sorted(_LOGS.glob("compile_selective-sm90-*.json")) if _LOGS.is_dir() else []
    return json.loads(found[-1].read_text()) if found else None


def bwd_timing_log(device: str | None = None) -> dict | None:
    """The committed log of ``benchmarks/time_selective_bwd.py`` on a GPU (the backward kernel's launch
    configurations, timed alone), or None where there is none.

    ``book/data/benchmarks/logs/time_selective_bwd-<gpu>.json`` (the newest if there are several; ``device``
    picks one by name; dry runs on a CPU never count). Its ``rows`` hold, per shape and configuration,
    ``bwd_us``, ``fwd_ck_us`` (the training forward with its checkpoints) and ``status``; ``configs`` adds
    the same rows keyed by (shape, threads per channel ``tn``, warps per program).
    """
    log = newest_log(_LOGS, "time_selective_bwd-*.json", lambda doc: not doc.get("device", "cpu").startswith("cpu"),
                     device)
    if log is None:
        return None
    log["configs"] = {(r["shape"], r["knobs"]["tn"], r["knobs"]["num_warps"]): r for r in log["rows"]}
    return log


def ladder(log: dict | None = None, table: dict | None = None) -> list[dict]:
    """One dict per rung of the ladder: its index, label, change and reason (from the log, or else from the
    compile table's order), the measured ``median_us`` and ``fraction_of_floor`` at the goal shape when a GPU
    log exists, and the compile table's ``regs``, ``instr_per_el``, ``mufu_per_el`` and ``predicted_us``."""
    log = sweep_log() if log is None else log
    table = compile_table() if table is None else table
    rungs = {}
    for r in (log or {}).get("rungs", []):
        rungs[r["index"]] = dict(r)
    compiled = {row["label"]: row for row in (table or {}).get("rungs", [])}
    if not rungs:
        for i, row in enumerate((table or {}).get("rungs", [])):
            rungs[i] = dict(index=i, label=row["label"], change=row.get("change", ""), reason=row.get("reason", ""))
    goal = (log or {}).get("goal_shape")
    measured = {}
    for row in (log or {}).get("rows", []):
        if row.get("shape") == goal and row.get("median_us") and row.get("status") == "ok":
            if row.get("rung") is not None:
                measured[row["rung"]] = row
            elif row.get("label", "").startswith("nsplit tn2 pf1 (default)"):
                measured.setdefault("default", row)
    out = []
    for i in sorted(rungs):
        r = rungs[i]
        m = measured.get(i) or (measured.get("default") if "default" in r.get("change", "") else None)
        c = compiled.get(r["label"], {})
        out.append(dict(r, median_us=m and m["median_us"], fraction_of_floor=m and m.get("fraction_of_floor"),
                        floor_us=m and m.get("floor_us"), regs=c.get("regs"), instr_per_el=c.get("instr_per_el"),
                        mufu_per_el=c.get("mufu_per_el"), predicted_us=c.get("predicted_us")))
    return out


def plot_ladder(rungs: list[dict], floor_us: float | None = None, peer_us: float | None = None, ax=None,
                title: str = ""):
    """Time per rung (measured where there is a measurement, else the offline prediction, hatched), with the
    roofline floor and the CUDA peer as horizontal lines. Returns the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(10, 3.8))[1]
    x = list(range(len(rungs)))
    for i, r in zip(x, rungs):
        if r.get("median_us"):
            ax.bar(i, r["median_us"], color="C0")
        elif r.get("predicted_us"):
            ax.bar(i, r["predicted_us"], color="none", edgecolor="C0", hatch="//")
    if floor_us:
        ax.axhline(floor_us, color="C3", ls="--", label=f"floor {floor_us:.0f} µs")
    if peer_us:
        ax.axhline(peer_us, color="C2", ls=":", label=f"mamba_ssm CUDA {peer_us:.0f} µs")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{r['index']}. {r['label']}" for r in rungs], rotation=30, ha="right")
    ax.set_ylabel("time [µs]")
    ax.set_title(title)
    if floor_us or peer_us:
        ax.legend()
    return ax
