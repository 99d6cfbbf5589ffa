"""Checked exercises of chapter 8 (Mamba-2 and state space duality)."""

import torch

from ..ssd import segsum
from . import Exercise, register


def _decays(shape, gen, scale=1.0, dtype=torch.float64):
    """Log-decays a_t = Δ_t A <= 0, as SSD makes them."""
    return (-scale * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)


def _segsum_cases(gen):
    zero_steps = _decays((2, 33), gen)
    zero_steps[:, ::4] = 0.0  # a_t = 0: steps that do not decay (Δ = 0, as in a padded chunk)
    return [
        ("a single step: length 1", (_decays((1,), gen),)),
        ("a batch (2, 3) of length 7", (_decays((2, 3, 7), gen),)),
        ("odd length 33 with some a_t = 0", (zero_steps,)),
        ("one sequence of length 64, large decays (up to 8 per step)", (_decays((64,), gen, scale=8.0),)),
        # long float32 sequences: the prefix sums reach -150 and -750, where the
        # difference of two prefix sums has lost about 5 of float32's 7 digits
        ("float32, batch 2, length 300", (_decays((2, 300), gen, dtype=torch.float32),)),
        ("float32, length 1500", (_decays((1500,), gen, dtype=torch.float32),)),
    ]


register(Exercise(
    name="ch08.segsum",
    signature="mask(a) -> M, i.e. lambda a: torch.exp(my_segsum(a))",
    task="a stable segment sum for log-decays a (..., T): M (..., T, T) = exp(Σ_{r=s+1..t} a_r), 0 above the diagonal",
    # float64 reference on the same (rounded) inputs, returned in the input's dtype
    reference=lambda a: torch.exp(segsum(a.double())).to(a.dtype),
    cases=_segsum_cases,
    hint="Sum each segment from its own terms: put a_r in column s for every r > s (an (..., T, T) tensor "
    "masked below the diagonal), take a cumulative sum down the columns, and set the entries above the "
    "diagonal to -inf so that exp gives exact zeros. A difference of two prefix sums, cs_t - cs_s, is "
    "exact on paper but cancels catastrophically in float32 once the prefix sums are large.",
    tol=5e-7,
))


def _first_kernel_cases(gen):
    """Float64 CPU inputs of ssd (Δ > 0 as given) and C Bᵀ per chunk of 64 steps and group."""
    from ..ssd import ssd_chunk_cb

    def case(b, L, H, P, G, N, scale=1.0):
        x = torch.randn(b, L, H, P, generator=gen, dtype=torch.float64)
        dt = 0.05 + 0.5 * torch.rand(b, L, H, generator=gen, dtype=torch.float64)
        A = -(0.2 + 2 * torch.rand(H, generator=gen, dtype=torch.float64))
        B, C = (0.5 * torch.randn(b, L, G, N, generator=gen, dtype=torch.float64) for _ in range(2))
        return x, dt, A, B, C, scale * ssd_chunk_cb(B, C, 64)

    return [
        ("a single step (L = 1), N = 1, one head", case(1, 1, 1, 1, 1, 1)),
        ("L = 70: a whole chunk and a partial one; 4 heads in 2 groups", case(2, 70, 4, 5, 2, 3)),
        ("P = 17, N = 20: not powers of two", case(1, 40, 2, 17, 1, 20)),
        ("three chunks, batch 2, 3 heads sharing one group", case(2, 150, 3, 4, 1, 8)),
        ("CB = 2 C Bᵀ: the diagonal blocks must use the CB given", case(1, 90, 2, 3, 1, 4, scale=2.0)),
    ]


def _first_kernel_reference(x, dt, A, B, C, CB, Q=64):
    """The chunked form with the diagonal blocks' scores read from CB (b, c, G, Q, Q): equal to ssd
    when CB is C Bᵀ of every chunk; the states still come from B and C."""
    from ..ssd import _heads, _to_chunks, ssd_chunk_states, ssd_off_diagonal, ssd_state_passing

    b, L, H, P = x.shape
    xc, dtc, Bc, Cc = _to_chunks(x, dt, _heads(B, H), _heads(C, H), Q)  # (b, c, Q, ...)
    a = (dtc * A).permute(0, 3, 1, 2)  # (b, H, c, Q)
    dtx = dtc[..., None] * xc
    scores = CB.repeat_interleave(H // B.shape[2], dim=2)  # (b, c, H, Q, Q)
    y = torch.einsum("bhcts,bchts,bcshp->bcthp", torch.exp(segsum(a)), scores, dtx)
    states_in, _ = ssd_state_passing(ssd_chunk_states(Bc, a, dtx), a.sum(-1))
    return (y + ssd_off_diagonal(Cc, a, states_in)).flatten(1, 2)[:, :L]


register(Exercise(
    name="ch08.first_kernel_cb",
    signature="first_kernel_cb(x, dt, A, B, C, CB) -> y",
    task="the first SSD kernel one rung up: read C Bᵀ from CB (b, c, G, 64, 64), chunk k's C Bᵀ of group g "
    "at CB[b, k, g], instead of computing it in every head; x (b, L, H, P), dt (b, L, H) = Δ, A (H,), "
    "B, C (b, L, G, N) -> y (b, L, H, P)",
    reference=_first_kernel_reference,
    cases=_first_kernel_cases,
    hint="Start from ssd_first_kernel: add a CB_ptr argument, and in the loop over chunks replace the "
    "product tl.dot(Ck, tl.trans(Bk)) by a load of the (64, 64) tile of chunk k and group g: its offset "
    "in the contiguous (b, c, G, 64, 64) tensor is ((b * n_chunks + k) * G + g) * 64 * 64, plus "
    "s[:, None] * 64 + s[None, :]. The check passes float64 CPU tensors: give your kernel float32 "
    "ones on your device (the interpreter's on a CPU) and return y on the CPU.",
    tol=1e-5,
    outputs=("y",),
))
