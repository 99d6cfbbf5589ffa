"""Checked exercises of chapter 10 (inference and long context)."""

import torch

from ..inference import selective_scan_from
from . import Exercise, register


def _carry_in_reference(h0, dt, A, C):
    """What h_{-1} adds to a chunk: the scan of a zero input started from h0 (selective_scan_from with u = 0)."""
    b, N, L = C.shape
    zeros = torch.zeros_like(dt)
    return selective_scan_from(zeros, dt, A, torch.zeros(b, N, L, dtype=C.dtype), C, initial_state=h0, impl="naive")


def _carry_in_cases(gen):
    def case(b, D, N, L, dt_hi=0.1):
        h0 = torch.randn(b, D, N, generator=gen, dtype=torch.float64)
        dt = 1e-3 + (dt_hi - 1e-3) * torch.rand(b, D, L, generator=gen, dtype=torch.float64)  # Δ > 0
        A = -torch.exp(torch.randn(D, N, generator=gen, dtype=torch.float64))  # A < 0
        C = torch.randn(b, N, L, generator=gen, dtype=torch.float64)
        return h0, dt, A, C

    return [
        ("a single step: b = 1, D = 1, N = 1, L = 1", case(1, 1, 1, 1)),
        ("b = 2, D = 3, N = 4, L = 5", case(2, 3, 4, 5)),
        ("odd sizes b = 1, D = 5, N = 7, L = 33", case(1, 5, 7, 33)),
        ("large steps (Δ up to 5): the carried state is forgotten within the chunk", case(2, 4, 8, 40, dt_hi=5.0)),
    ]


register(Exercise(
    name="ch10.carry_in",
    signature="carry_in(h0, dt, A, C) -> (y, h)",
    task="what a state h0 (b, D, N) carried into a chunk adds: y (b, D, L) = <(Π_{r<=t} exp(Δ_r A)) ⊙ h0, C_t> "
         "and h (b, D, N) = (Π_{r<L} exp(Δ_r A)) ⊙ h0; dt (b, D, L) is Δ, A (D, N), C (b, N, L)",
    reference=_carry_in_reference,
    cases=_carry_in_cases,
    hint="With no input the recurrence only decays: h_t = exp(Δ_t A) ⊙ h_{t-1}. The product of the decays up "
    "to t is exp(A · Σ_{r<=t} Δ_r): a cumulative sum of dt along L, shaped (b, D, 1, L) against A (1, D, N, 1). "
    "The product includes step t itself (the output reads the state after the update), and C is shared by the "
    "D channels (broadcast it as (b, 1, N, L)).",
    outputs=("y", "h"),
))


def _kv_reference(n_layers, n_kv_heads, head_dim, context, batch, bytes_per_element):
    return torch.tensor(2 * n_layers * n_kv_heads * head_dim * context * batch * bytes_per_element, dtype=torch.float64)


def _kv_cases(gen):
    def r(lo, hi):
        return int(torch.randint(lo, hi + 1, (), generator=gen))

    return [
        ("a single token, one layer, one head of width 1, 1 byte", (1, 1, 1, 1, 1, 1)),
        ("a small model: 4 layers, 4 heads of 16, 1000 tokens, float32", (4, 4, 16, 1000, 1, 4)),
        ("random sizes, bfloat16", (r(1, 48), r(1, 16), 2 * r(8, 64), r(1, 10 ** 6), r(1, 8), 2)),
        ("grouped-query attention: 8 KV heads of 128, 32 layers, 128k tokens", (32, 8, 128, 131072, 1, 2)),
    ]


register(Exercise(
    name="ch10.kv_cache_bytes",
    signature="kv_cache_bytes(n_layers, n_kv_heads, head_dim, context, batch, bytes_per_element) -> int",
    task="the bytes of a Transformer's KV cache after `context` tokens",
    reference=_kv_reference,
    cases=_kv_cases,
    hint="Every layer stores, for every sequence of the batch and every past token, one key and one value "
    "per KV head, each head_dim numbers. Count both the keys and the values.",
))
