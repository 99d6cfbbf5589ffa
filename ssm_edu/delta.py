"""DeltaNet and the gated delta rule (chapter 11).

Symbols -> code:  S_t (the K x V matrix state) -> S,  q_t, k_t, v_t -> q, k, v,
β_t (the write strength) -> beta,  α_t = exp(g_t) (the decay; g is its log) -> g,
o_t -> o.   Shapes: b batch, T length, h heads, K key size, V value size;
q, k (b, T, h, K), v (b, T, h, V), beta, g (b, T, h), S (b, h, K, V).

    S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,      o_t = scale · S_tᵀ q_t

(the semantics of fla's ``delta_rule`` / ``gated_delta_rule`` ops, with q and k
used as given: the layer normalises them). Read as online regression: with
α = 1 the update is one gradient step, of size β_t, on ½‖Sᵀk_t − v_t‖², so
the state *corrects* what it returns for k_t instead of adding to it; with
β = 1 and orthonormal keys it overwrites: Sᵀk_t = v_t exactly. Without the
``- β k kᵀ`` term (and with α = exp(Δ A)) this is Mamba-2's recurrence.

* ``naive``: the loop: S <- αS, u = β(v - Sᵀk), S <- S + k uᵀ, o = scale·Sᵀq.
* ``vectorized``: chunks of ``chunk_size`` steps in parallel through the WY
  (UT) representation; a loop over chunks carries S. Inside a chunk with
  cumulative decays γ_i = α_1⋯α_i and start state S0, the pseudo-values u_i of
  the loop solve the unit lower-triangular system

      (I + A) U = diag(β) V - diag(βγ) K S0,   A_ij = β_i (γ_i/γ_j) k_iᵀk_j  (j < i)

  so U = T(βV) - T(βγK) S0 with T = (I + A)^-1 (forward substitution); then
  O = scale·(diag(γ) Q S0 + (QKᵀ ∘ Γ)_{j≤i} U) and S_end = γ_C S0 + Kᵀ diag(γ_C/γ) U,
  where Γ_ij = γ_i/γ_j, computed as exp of differences of cumulative log
  decays (never a ratio of small numbers).
"""

from __future__ import annotations

import math

import torch

from ._dispatch import dispatch
from ._validate import Shapes, check_dtype, check_same_device
from .numerics import accumulation_dtype

__all__ = ["delta_rule", "delta_rule_naive", "delta_rule_vectorized"]

_REAL = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def delta_rule_naive(q, k, v, beta, g, scale, S0):
    """The specification: one step of the recurrence per iteration. Returns (o, S_T)."""
    b, T, h, K = q.shape
    S = S0.clone()  # (b, h, K, V)
    o = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None, None] * S  # decay: S <- α_t S
        kt, vt = k[:, t], v[:, t]  # (b, h, K), (b, h, V)
        u = beta[:, t, :, None] * (vt - torch.einsum("bhkv,bhk->bhv", S, kt))  # correct what S returns for k_t
        S = S + kt[..., :, None] * u[..., None, :]  # rank-1 write k_t u_tᵀ
        o.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return torch.stack(o, dim=1), S  # (b, T, h, V), (b, h, K, V)


def delta_rule_vectorized(q, k, v, beta, g, scale, S0, chunk_size=64):
    """Chunks in parallel through the WY/UT form (module docstring); a loop over chunks carries S."""
    b, T, h, K = q.shape
    C = min(chunk_size, T)
    pad = (-T) % C
    if pad:  # padded steps have k = v = β = g = 0: α = 1 and nothing is written, so S passes through
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        beta, g = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (beta, g))
    n = (T + pad) // C
    # (b, h, n, C, ·): heads first, then chunks
    q, k, v = (x.reshape(b, n, C, h, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v))
    beta, g = (x.reshape(b, n, C, h).permute(0, 3, 1, 2) for x in (beta, g))
    G = torch.cumsum(g, dim=-1)  # (b, h, n, C) log γ_i inside each chunk
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    Gamma = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~causal, -math.inf))  # γ_i/γ_j, j <= i
    A = (beta[..., :, None] * Gamma * (k @ k.transpose(-1, -2))).tril(-1)  # (b, h, n, C, C) strictly lower
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    solve = lambda rhs: torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    U0 = solve(beta[..., None] * v)  # T(βV): (b, h, n, C, V)
    W = solve((beta * torch.exp(G))[..., None] * k)  # T(βγK): (b, h, n, C, K)
    QK = (q @ k.transpose(-1, -2)) * Gamma  # (b, h, n, C, C), zero above the diagonal
    decay_out = torch.exp(G[..., -1:] - G)  # (b, h, n, C) γ_C/γ_j
    S = S0
    out = []
    for c in range(n):  # the recurrence across chunks: the only sequential part
        U = U0[:, :, c] - W[:, :, c] @ S  # (b, h, C, V)
        out.append(scale * (torch.exp(G[:, :, c])[..., None] * (q[:, :, c] @ S) + QK[:, :, c] @ U))
        S = torch.exp(G[:, :, c, -1])[..., None, None] * S + k[:, :, c].transpose(-1, -2) @ (decay_out[:, :, c, :, None] * U)
    o = torch.stack(out, dim=2).reshape(b, h, n * C, -1)[:, :, :T].transpose(1, 2)  # (b, T, h, V)
    return o, S


def delta_rule(q, k, v, beta, g=None, scale=None, initial_state=None, return_final_state=False, chunk_size=64, impl="auto"):
    """The (gated) delta rule, with fla's semantics (module docstring).

    Args:
        q, k: (b, T, h, K) queries and keys (normalise k to unit length for
            the regression reading; the op uses them as given).
        v: (b, T, h, V) values.
        beta: (b, T, h) write strengths, usually in (0, 1].
        g: (b, T, h) log decays (<= 0), or None for DeltaNet (α = 1).
        scale: output scale, 1/sqrt(K) by default.
        initial_state: (b, h, K, V) or None for zero.
        return_final_state: also return S_T (b, h, K, V).
        chunk_size: the chunk length of ``"vectorized"`` (the result does not depend on it).
        impl: ``"naive"``, ``"vectorized"`` or ``"auto"`` (vectorized).
    Returns:
        o (b, T, h, V) (and S_T when asked), in the inputs' dtype;
        accumulation in float32 (float64 for float64 inputs).
        Non-finite inputs propagate to the outputs.
    """
    op = "delta_rule"
    fn = dispatch(op, impl, (q,), naive=delta_rule_naive, vectorized=delta_rule_vectorized)
    shapes = Shapes(op)
    shapes.check("q", q, "b T h K")
    shapes.check("k", k, "b T h K")
    shapes.check("v", v, "b T h V")
    shapes.check("beta", beta, "b T h")
    if g is not None:
        shapes.check("g", g, "b T h")
    if initial_state is not None:
        shapes.check("initial_state", initial_state, "b h K V")
    shapes.nonempty("T")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be an int >= 1; got {chunk_size!r}")
    check_same_device(op, q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state)
    for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta), ("g", g), ("initial_state", initial_state)):
        if x is not None:
            check_dtype(op, name, x, _REAL)
    work = accumulation_dtype(q.dtype)
    b, T, h, K = q.shape
    scale = 1.0 / math.sqrt(K) if scale is None else float(scale)
    g = torch.zeros_like(beta, dtype=work) if g is None else g.to(work)
    S0 = torch.zeros(b, h, K, v.shape[-1], dtype=work, device=q.device) if initial_state is None else initial_state.to(work)
    args = [x.to(work) for x in (q, k, v, beta)] + [g, scale, S0]
    o, S = fn(*args, chunk_size=chunk_size) if fn is delta_rule_vectorized else fn(*args)
    o, S = o.to(q.dtype), S.to(q.dtype)  # API.md: outputs in the inputs' dtype
    return (o, S) if return_final_state else o
