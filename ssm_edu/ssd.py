"""Mamba-2's state space duality, SSD (chapter 8).

Symbols -> code:  x_t -> x,  Δ_t -> dt,  A_h (one scalar per head) -> A,
B_t -> B,  C_t -> C,  D -> D,  gate -> z,  h_{-1} -> initial_states,
a_t = Δ_t A (the log-decay) -> a,  x̄_t = Δ_t x_t -> dtx,  Q -> chunk_size.
Shapes: b batch, L length, H heads, P head dim, G groups of B and C (head h
reads group h // (H // G)), N state size, c chunks of Q steps.

Per head, with the state h_t a P x N matrix:

    h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ        y_t = h_t C_t + D x_t

and then y_t ⊙ SiLU(z_t) when z is given. Before anything, Δ <- Δ + dt_bias
and Δ <- softplus(Δ) when asked (the semantics of mamba_ssm's
``mamba_chunk_scan_combined``; mamba_ssm also clamps Δ to ``dt_limit``,
[0, inf) by default, which changes nothing for the positive steps Δ is
meant to be).

Unrolling the recurrence from h_{-1} = 0 gives the dual, attention-like form

    y_t = Σ_{s <= t} M[t, s] (C_tᵀ B_s) x̄_s,     M[t, s] = exp(Σ_{r=s+1..t} a_r),

that is Y = (M ∘ C Bᵀ) X̄ with a 1-semiseparable mask M (one matrix per head).

* ``naive``: the recurrence, one step per loop iteration (the specification).
* ``quadratic``: Y = (M ∘ C Bᵀ) X̄, with log M from ``segsum``: O(L²) work
  and memory per head, no loop.
* ``vectorized``: the chunked algorithm (Dao & Gu 2024), in four steps that
  are exported so that chapter 8 can show them one by one:
  ``ssd_diagonal_blocks`` (the quadratic form inside each chunk),
  ``ssd_chunk_states`` (the state each chunk leaves behind from a zero
  start), ``ssd_state_passing`` (the recurrence between chunks, itself an SSD
  with one step per chunk) and ``ssd_off_diagonal`` (what the states passed
  in contribute inside each chunk). O(L Q) work for the first step, O(L N P)
  for the others.
* ``triton``: the same four steps, fused into three kernels
  (``kernels/ssd.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import dispatch, float32_kernel
from ._validate import Shapes, check_dtype, check_same_device
from .numerics import accumulation_dtype

__all__ = [
    "ssd",
    "ssd_naive",
    "ssd_quadratic",
    "ssd_vectorized",
    "segsum",
    "segsum_unstable",
    "ssd_mask",
    "ssd_diagonal_blocks",
    "ssd_chunk_states",
    "ssd_state_passing",
    "ssd_off_diagonal",
    "ssd_chunk_cb",
    "effective_dt",
    "ssd_ladder_log",
    "ssd_ladder_rows",
]

_FLOAT = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ---------------------------------------------------------------- shared pieces


def effective_dt(dt, dt_bias=None, dt_softplus=False):
    """Δ as the recurrence uses it: dt (+ dt_bias), then softplus if asked.

    dt (b, L, H), dt_bias (H,) or None -> (b, L, H).
    """
    if dt_bias is not None:
        dt = dt + dt_bias
    return F.softplus(dt) if dt_softplus else dt  # softplus as in mamba_ssm: identity above 20


def _heads(B, H):
    """Groups -> heads: (b, L, G, N) -> (b, L, H, N), head h reads group h // (H // G)."""
    return B.repeat_interleave(H // B.shape[2], dim=2)


def _skip_and_gate(y, x, D=None, z=None):
    """y + D x, then ⊙ SiLU(z). y, x, z (b, L, H, P), D (H,) or (H, P)."""
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)  # (H, 1) or (H, P) broadcast over (b, L)
    if z is not None:
        y = y * F.silu(z)
    return y


# ---------------------------------------------------------------- naive: the specification


def ssd_naive(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
              initial_states=None, return_final_states=False):
    """The specification: one step of the recurrence per loop iteration.

    x (b, L, H, P), dt (b, L, H), A (H,), B, C (b, L, G, N) -> y (b, L, H, P)
    (and the last state (b, H, P, N) when asked).
    """
    b, L, H, P = x.shape
    dt = effective_dt(dt, dt_bias, dt_softplus)
    B, C = _heads(B, H), _heads(C, H)  # (b, L, H, N)
    h = x.new_zeros(b, H, P, B.shape[-1]) if initial_states is None else initial_states  # (b, H, P, N)
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)  # (b, H)
        dtx = dt[:, t, :, None] * x[:, t]  # (b, H, P)
        h = decay[:, :, None, None] * h + dtx[..., None] * B[:, t, :, None, :]  # (b, H, P, N)
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))  # h_t C_t
    y = _skip_and_gate(torch.stack(ys, dim=1), x, D, z)  # (b, L, H, P)
    return (y, h) if return_final_states else y


# ---------------------------------------------------------------- quadratic: the dual form


def segsum_unstable(a):
    """Segment sums from a cumulative sum: out[..., t, s] = cs_t - cs_s.

    a (..., T) -> (..., T, T), -inf above the diagonal. Equal in exact
    arithmetic to ``segsum``, but the difference of two large cumulative sums
    cancels catastrophically once |cs| grows (long sequences, large decays).
    """
    T = a.shape[-1]
    cs = torch.cumsum(a, dim=-1)  # (..., T)
    out = cs[..., :, None] - cs[..., None, :]  # (..., T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return out.masked_fill(~causal, -torch.inf)


def segsum(a):
    """Stable segment sums: out[..., t, s] = Σ_{r=s+1..t} a_r for s <= t, -inf above.

    a (..., T) -> (..., T, T). Each entry is summed from its own terms (a
    masked cumulative sum down each column) instead of as a difference of two
    long prefix sums, so it keeps full relative precision; exp(out) is the
    1-semiseparable mask M, with exact zeros above the diagonal.
    """
    T = a.shape[-1]
    rows = a[..., :, None].expand(*a.shape, T)  # rows[..., t, s] = a_t
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)  # r > s
    out = torch.cumsum(rows.masked_fill(~strict, 0), dim=-2)  # Σ_{s < r <= t} a_r
    causal = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return out.masked_fill(~causal, -torch.inf)


def ssd_mask(dt, A):
    """The 1-semiseparable mask M[t, s] = exp(Σ_{r=s+1..t} Δ_r A), per head.

    dt (b, L, H) (already biased / softplus-ed), A (H,) -> M (b, H, L, L).
    """
    a = (dt * A).transpose(1, 2)  # (b, H, L)
    return torch.exp(segsum(a))


def ssd_quadratic(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                  initial_states=None, return_final_states=False):
    """The dual form Y = (M ∘ C Bᵀ) X̄, with X̄ = Δ x; the same arguments as ``ssd_naive``.

    Materialises (b, H, L, L): attention-like, O(L²) per head.
    """
    b, L, H, P = x.shape
    dt = effective_dt(dt, dt_bias, dt_softplus)
    B, C = _heads(B, H), _heads(C, H)  # (b, L, H, N)
    M = ssd_mask(dt, A)  # (b, H, L, L)
    dtx = dt[..., None] * x  # X̄ (b, L, H, P)
    scores = torch.einsum("bthn,bshn->bhts", C, B) * M  # M ∘ C Bᵀ (b, H, L, L)
    y = torch.einsum("bhts,bshp->bthp", scores, dtx)  # (b, L, H, P)
    final = torch.einsum("bhs,bshp,bshn->bhpn", M[:, :, -1, :], dtx, B)  # the last row of M gives h_{L-1}
    if initial_states is not None:
        # h_{-1} decays by exp(Σ_{r<=t} a_r) before it reaches step t
        decay = torch.exp(torch.cumsum(dt * A, dim=1))  # (b, L, H)
        y = y + torch.einsum("bthn,bhpn,bth->bthp", C, initial_states, decay)
        final = final + decay[:, -1, :, None, None] * initial_states
    y = _skip_and_gate(y, x, D, z)
    return (y, final) if return_final_states else y


# ---------------------------------------------------------------- vectorized: the chunked algorithm


def ssd_diagonal_blocks(C, B, a, dtx):
    """Step 1: the quadratic form inside each chunk (the diagonal blocks of M ∘ C Bᵀ).

    C, B (b, c, Q, H, N), a (b, H, c, Q) log-decays, dtx (b, c, Q, H, P)
    -> Y_diag (b, c, Q, H, P): each chunk's output from a zero state.
    """
    M = torch.exp(segsum(a))  # (b, H, c, Q, Q)
    scores = torch.einsum("bclhn,bcshn->bhcls", C, B) * M
    return torch.einsum("bhcls,bcshp->bclhp", scores, dtx)


def ssd_chunk_states(B, a, dtx):
    """Step 2: the state each chunk leaves behind, starting from zero.

    B (b, c, Q, H, N), a (b, H, c, Q), dtx (b, c, Q, H, P) -> (b, c, H, P, N):
    Σ_s exp(Σ_{r=s+1..Q-1} a_r) x̄_s B_sᵀ over the chunk's steps s.
    """
    a_cum = torch.cumsum(a, dim=-1)  # (b, H, c, Q), short sums: within one chunk
    decay = torch.exp(a_cum[..., -1:] - a_cum)  # to the chunk's end
    return torch.einsum("bcshn,bhcs,bcshp->bchpn", B, decay, dtx)


def ssd_state_passing(states, a_chunk, initial_states=None):
    """Step 3: the recurrence between chunks, an SSD with one step per chunk.

    states (b, c, H, P, N) from step 2, a_chunk (b, H, c) each chunk's total
    log-decay, initial_states (b, H, P, N) or None -> (states_in, final):
    states_in (b, c, H, P, N) the state entering each chunk, final (b, H, P, N).
    With S_k = exp(a_chunk_k) S_{k-1} + states_k, the 1-semiseparable mask of
    the c + 1 chunk boundaries does it in one product.
    """
    if initial_states is None:
        initial_states = torch.zeros_like(states[:, 0])
    states = torch.cat([initial_states[:, None], states], dim=1)  # (b, c + 1, H, P, N)
    decay = torch.exp(segsum(F.pad(a_chunk, (1, 0))))  # (b, H, c + 1, c + 1)
    out = torch.einsum("bhzk,bkhpn->bzhpn", decay, states)  # S at every boundary
    return out[:, :-1], out[:, -1]


def ssd_off_diagonal(C, a, states_in):
    """Step 4: what the state entering each chunk contributes to its outputs.

    C (b, c, Q, H, N), a (b, H, c, Q), states_in (b, c, H, P, N)
    -> Y_off (b, c, Q, H, P) = exp(Σ_{r<=t} a_r) S_{k-1} C_t within chunk k.
    """
    decay = torch.exp(torch.cumsum(a, dim=-1))  # (b, H, c, Q): from the chunk's start to t
    return torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states_in, decay)


def ssd_chunk_cb(B, C, chunk_size=64):
    """C Bᵀ of every chunk and group: B, C (b, L, G, N) -> (b, c, G, Q, Q).

    Entry [.., t, s] is C_t · B_s for steps t, s of the chunk (zero past L). It does
    not depend on the head: the Triton kernels compute it once per chunk and group.
    """
    Q = chunk_size
    pad = -B.shape[1] % Q
    Bc, Cc = (F.pad(t, (0, 0, 0, 0, 0, pad)).unflatten(1, (-1, Q)) for t in (B, C))  # (b, c, Q, G, N)
    return torch.einsum("bctgn,bcsgn->bcgts", Cc, Bc)


def _to_chunks(x, dt, B, C, Q):
    """Pad L to a multiple of Q and cut into chunks; padded steps have Δ = 0 (decay 1, no input)."""
    L = x.shape[1]
    pad = -L % Q
    if pad:
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    return [t.unflatten(1, (t.shape[1] // Q, Q)) for t in (x, dt, B, C)]  # (b, c, Q, ...)


def ssd_vectorized(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
                   initial_states=None, return_final_states=False):
    """The chunked algorithm in four steps; the same arguments as ``ssd_naive`` plus ``chunk_size``.

    Works for any L (the last chunk is padded with Δ = 0 steps, which change
    nothing) and gives the same result for every chunk size.
    """
    b, L, H, P = x.shape
    dt = effective_dt(dt, dt_bias, dt_softplus)
    xc, dtc, Bc, Cc = _to_chunks(x, dt, _heads(B, H), _heads(C, H), chunk_size)  # (b, c, Q, ...)
    a = (dtc * A).permute(0, 3, 1, 2)  # (b, H, c, Q)
    dtx = dtc[..., None] * xc  # (b, c, Q, H, P)
    y_diag = ssd_diagonal_blocks(Cc, Bc, a, dtx)
    states = ssd_chunk_states(Bc, a, dtx)
    states_in, final = ssd_state_passing(states, a.sum(-1), initial_states)
    y_off = ssd_off_diagonal(Cc, a, states_in)
    y = (y_diag + y_off).flatten(1, 2)[:, :L]  # (b, L, H, P)
    y = _skip_and_gate(y, x, D, z)
    return (y, final) if return_final_states else y


# ---------------------------------------------------------------- public entry point


def ssd(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
        initial_states=None, return_final_states=False, impl="auto"):
    """Mamba-2 SSD (API.md): the semantics of mamba_ssm's ``mamba_chunk_scan_combined``.

    Args:
        x: (batch, L, H, P) inputs.
        dt: (batch, L, H) steps Δ (before ``dt_bias`` and softplus).
        A: (H,) one (negative) scalar per head.
        B, C: (batch, L, G, N), H % G == 0; head h reads group h // (H // G).
        chunk_size: Q of the chunked impls (``vectorized``, ``triton``); the
            result does not depend on it, and L need not be a multiple of it.
        D: (H,) or (H, P) skip connection, or None.
        z: (batch, L, H, P) gate: the output is multiplied by SiLU(z).
        dt_bias: (H,) added to dt; dt_softplus: apply softplus after it.
        initial_states: (batch, H, P, N) h_{-1}, zero by default.
        return_final_states: also return h_{L-1} (batch, H, P, N).
        impl: ``"naive"`` (loop), ``"quadratic"`` (the masked, attention-like
            form), ``"vectorized"`` (chunked, PyTorch), ``"triton"``
            (float32 / bfloat16 / float16; differentiable) or ``"auto"``.
    Returns:
        y (batch, L, H, P) in x's dtype, and the final state (same dtype) when
        asked. Accumulation in float32 (float64 for float64 x).
    """
    op = "ssd"
    fn = dispatch(op, impl, (x, dt, A, B, C, D, z, dt_bias, initial_states),
                  naive=ssd_naive, quadratic=ssd_quadratic, vectorized=ssd_vectorized,
                  triton="ssd:ssd_triton")
    shapes = Shapes(op)
    shapes.check("x", x, "batch L H P")
    shapes.check("dt", dt, "batch L H")
    shapes.check("A", A, "H")
    shapes.check("B", B, "batch L G N")
    shapes.check("C", C, "batch L G N")
    shapes.nonempty("L", "H", "G")
    if shapes["H"] % shapes["G"]:
        raise ValueError(f"{op}: the number of heads H = {shapes['H']} must be a multiple of the number of "
                         f"groups G = {shapes['G']} of B and C; got B of shape {tuple(B.shape)}")
    if D is not None:
        shapes.check("D", D, "H", "H P")
    if z is not None:
        shapes.check("z", z, "batch L H P")
    if dt_bias is not None:
        shapes.check("dt_bias", dt_bias, "H")
    if initial_states is not None:
        shapes.check("initial_states", initial_states, "batch H P N")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be an int >= 1; got {chunk_size!r}")
    tensors = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    check_same_device(op, **tensors)
    for name, t in tensors.items():
        if t is not None:
            check_dtype(op, name, t, _FLOAT)
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=bool(dt_softplus), initial_states=initial_states,
                  return_final_states=bool(return_final_states))
    fn = float32_kernel(op, impl, fn, double=x.dtype == torch.float64, what="float64 x", fallback=ssd_vectorized)
    if fn not in (ssd_naive, ssd_quadratic, ssd_vectorized):  # the Triton kernel
        return fn(x, dt, A, B, C, chunk_size=chunk_size, **kwargs)
    work = accumulation_dtype(x.dtype)
    cast = {k: (v.to(work) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    args = [t.to(work) for t in (x, dt, A, B, C)]
    if fn is ssd_vectorized:
        cast["chunk_size"] = chunk_size
    out = fn(*args, **cast)
    if return_final_states:
        return out[0].to(x.dtype), out[1].to(x.dtype)
    return out.to(x.dtype)


# ---------------------------------------------------------------- measured: the Triton kernels (chapter 8)


def ssd_ladder_log(path=None):
    """The GPU sweep's log (``benchmarks/sweep_ssd.py``) as a dict, or None where none is stored.

    By default the newest ``book/data/benchmarks/logs/sweep_ssd-<gpu>.json`` measured on a GPU
    (a copy of ``ssm_edu`` installed without the book's data has none); ``path`` reads that file.
    """
    import json
    import pathlib

    from .results import DATA, newest_log

    if path is not None:
        return json.loads(pathlib.Path(path).read_text())
    return newest_log(DATA / "logs", "sweep_ssd-*.json", lambda log: not log.get("dry"))


def ssd_ladder_rows(log, group="ladder"):
    """One dict per entry of ``group`` in a sweep log: name, what changed, the median time in µs (None
    if it was not measured), the fraction of the roofline floor, and the speed-up over the entry before."""
    rows, before = [], None
    for e in log["entries"]:
        if e["group"] != group:
            continue
        us, floor = e.get("median_us"), e.get("floor_us")
        rows.append(dict(name=e["name"], what=e["what"], us=us, status=e["status"],
                         fraction=floor / us if us and floor else None,
                         speedup=before / us if us and before else None))
        before = us or before
    return rows
