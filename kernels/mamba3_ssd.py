"""Mamba-3 (SISO) on the SSD kernels: the trapezoid as SSD plus a correction on the diagonal.

Why it works. The parallel form of ``ssm_edu/mamba3.py`` reads

    y_t = Σ_{s<=t} exp(Σ_{r=s+1..t} a_r) w[t, s] (q_tᵀ k_s) x_s + D x_t,    a_r = Δ_r A_r,
    w[t, s] = w_s = γ_s + (1 - λ_{s+1}) Δ_{s+1}  below the diagonal,   w[t, t] = γ_t.

Below the diagonal the weight depends on s alone: that is SSD's mask, with the
decays a_r and an input weight w_s, queries q and keys k. On the diagonal SSD
would use w_t where the trapezoid uses γ_t, so

    y = SSD(x; decays a, weights w, keys k, queries q) + (γ_t - w_t) (q_tᵀ k_t) x_t + D x_t,

and q_tᵀ k_t = C_tᵀ B_t, because one rotation turns both (Rot(Φ)ᵀ Rot(Φ) = I).
The final state needs no correction: w_{L-1} = γ_{L-1} (there is no step L to
lend its β-term), and an initial state's β-term is folded in before step 0, as
for the fused kernel.

SSD ties the weight to the decay through one Δ: decay exp(Δ A), weight Δ. With
A = -1 for every head and Δ̃_s = -Δ_s A_s (> 0: A < 0), the decays are right and
the weight is Δ̃_s; the ratio r_s = w_s / Δ̃_s goes into the keys, k̃_s = r_s k_s.
The keys and queries depend on the head (through Φ), so SSD runs with one group
per head.

Three steps, one autograd function (``_Scan``), so that the backward can hand
SSD's float32 gradients and states to the rotation, and x's two gradients
are summed as one is written:

1. The rotation (``_rotate_fwd``, a Triton kernel, below): Φ_t = Φ_{-1} +
   Σ_{r<=t} θ_r Δ_r walked along L per (batch, head, block of angle pairs),
   k̃ = r Rot(Φ) B and q = Rot(Φ) C written in x's dtype. Or ("tiles",
   and "joined", the default ``ROTATE``) every tile at once from the running
   sum of the tiles' own sums (``_tile_sums``, ``_rotate_tiles``; the
   backward likewise, its tiles being SSD's chunks). On an H100 at B4 L4096 H32 P64 N128 bf16
   (profiled, 2026-12-07) the walk took 2408 of the path's 2923 us, for about
   400 MB of traffic: 512 programs, each a chain of 64 dependent tiles. The
   tiles took 2271 us (and 58 us for their sums) with 32768 independent
   programs: the chain was not what made it slow. Both read and write B, C,
   k̃ and q one 2-byte element at a time, even and odd entries apart
   (compiled for sm_90: 32 STG.E.U16 and 32 LDG.E.U16 a program), while the
   tiles' sums, which read θ the same way but never touch those four,
   streamed θ at 2.3 TB/s. The form "joined" (the default) moves each row's
   entries as one contiguous block (LDG.E.128, STG.E.128) and splits them
   in registers, as ``mamba_ssm``'s Triton kernels do. On an H200 (profiled,
   2026-12-07, same shape) it took 178 us against the tiles' 1981 us, and
   its backward 806 us against 3860 us.
2. ``kernels/ssd.py``'s forward, z-free, with D and the initial state.
3. The correction in PyTorch (``addcmul_``: one pass over y in x's dtype); then,
   outside ``_Scan``, the gate.

The backward runs SSD's backward, then the rotation's (``_rotate_bwd``), which
walks the tiles in reverse: dB, dC from dL/dk̃, dL/dq (float32, as SSD's kernels
summed them; turned back by -Φ, summed over the group's heads), dΦ_s from the
rotations' derivatives, and dθ_t = Δ_t (Σ_{s>=t} dΦ_s + dΦ_T), the same sum for
dΔ (dΦ_T: the returned last angle's gradient). That sum over every later token
is long, and it cancels: its exact value is small next to its terms, while their
rounding errors (k̃, q in bfloat16) do not cancel, so a running sum over all of L
lost digits as L grew (dθ erred by 0.0235 at L = 300 on an H100, against a 0.02
tolerance). SSD's states give it in a short form at every chunk boundary u.
Turning every key and query from u on by one angle ε, pair i, leaves the
products q_tᵀ k_s with s, t >= u alone; it is the same as turning the state S_u
entering u by -ε and the final state h_T by +ε. So, with J(e, o) = (-o, e) the
generator of the turn (u, v) -> (u cos - v sin, u sin + v cos),

    G_u = Σ_{s>=u} dΦ_s = -<dS_u, J S_u> + <dh_T, J h_T>      (per pair, summed over P),

dS_u the loss's gradient with respect to S_u and dh_T that of the final state (0
when it is not returned): P · 2 products per pair, no long sum. SSD's reverse
walk holds dS_u in float32 and loads S_u anyway (``ssd_bwd(..., turns=True)``);
the rotation's walk restarts its running sum at every boundary from G_u + dΦ_T,
so it sums over one chunk of Q tokens at most (its tiles divide Q). dΦ_{-1},
the initial angle's gradient, is the running sum after the first chunk (dθ_0 /
Δ_0), no less accurate than dθ in that chunk; G_0 from the initial state, which
SSD's backward stores in x's dtype, would be no better.
Emulated in the interpreter (k̃, q and the stored states rounded to bfloat16):
dθ's error 0.021 at L = 300, 0.042 at L = 1000 before; 0.0072 and 0.0076 now.

Traffic (forward, B4 L4096 H32 P64 N128, bf16): the rotation reads θ (134 MB,
float32) and writes k̃, q (2 x 134 MB); SSD reads them with x (67 MB) and
writes y (67 MB); the correction reads x and y and writes y again (200 MB):
about 1.0 GB, 335 us at 3 TB/s, against 283 MB for the fused kernel, which
never writes k̃ and q (benchmarks/notes/mamba3.md). This path buys SSD's
kernels at the price of that traffic. Compiled for sm_90 (Triton 3.7.1) at
that shape SSD's forward runs 256 programs (one segment), its backward's chunk
kernel 8192 and 16384 (output and input side), the rotation 512
(benchmarks/compile_mamba3.py); the rotation's backward, with its restarts at
the chunk boundaries and SSD's parts of dL/dk̃ summed as it reads them (the keys'
work, then the queries'), takes 167 registers walking, 168 in tiles and 128
joined (4 blocks of 4 warps an SM), and spills nothing (182, 168 and 128 when
PyTorch summed the parts).

Traffic of the backward's glue (same shape). SSD's chunk kernel leaves dB and
dC as float32 parts (b, L, parts, H, N), 268 MB each: three of dL/dk̃ (the
output side's and the input side's two blocks of P), one of dL/dq. Summed in
PyTorch (four copying reductions, two additions) they moved 3.2 GB, and the
rotation then read the sums (0.54 GB): about 0.94 ms at 4 TB/s. The rotation
now reads the parts (1.07 GB) and sums them in registers: 2.7 GB, about 0.67
ms, less. And x's two gradients, SSD's and the correction's, are summed as
the second is written (201 MB, where writing it and adding took 335 MB).

The backward's heads in one program (``ROT_BWD_HEADS``, the default; ``rotate=dict(bwd_heads=k)``). In
tiles, ``_rotate_bwd`` runs one program per head, and every head's program adds its dB and dC atomically into
the group's (b, L, G, N) float32 sums and reads the group's tile of B and C again. At B4 L4096 H32 N128 G1
that is 2 x 32 x 2.1M = 134M contended float32 atomic adds onto 4.2M addresses, and 32 reads of B and C (268
MB from L2), beside about 1.39 GB from memory (dL/dk̃'s three parts and dL/dq's one, 1.07 GB; θ in and dθ out,
2 x 134 MB; dΔ's and dr's parts, 17 MB): 325 us at 4.3 TB/s, where the H200 took 806 us. ``_rotate_bwd_heads``
runs one program per (batch, group, block of heads; pairs; tile): it loads B's and C's tile once, sums dB and
dC over the heads in registers and stores them once, plainly when it has all the group's heads (the atomics
only when the heads are split over programs). The heads' loop is its innermost (the parts' loops unrolled), and
Triton pipelines its loads (``ROT_BWD_STAGES`` = 3: the next heads' θ and gradient parts on their way through
shared memory while one head is computed). Automatic (``_auto_heads``): all the group's heads unless the grid
would have fewer than 4 programs an SM, then halved until it has; at the goal shape 4 x 1 x 4 x 64 = 1024
programs, 7.8 an H200 SM: all 32 heads. Compiled for sm_90: 216 registers, no spill, 75 KB of shared memory,
2 blocks of 4 warps an SM (240 registers and 4 KB without the pipeline). Prediction (H200): the 134M atomics
and 260 MB of L2 reads gone, 16.8 MB of plain stores in their place; 350-450 us for the kernel against 806
(its floor 325 us; two blocks an SM and a grid of 3.9 waves are the risk), the path's forward and backward
350-450 us less. Measured on an H100 (torch 2.11, Triton 3.6; benchmarks/sweep_mamba3.py): the path's
forward and backward 4094 us with all 32 heads a program and 3 stages, against 4665 us one head a program,
571 us less (8 heads 4213, 2 heads 4608; 2 stages 4119, 1 stage 4274).

The rotation inside SSD's forward (``FUSED_ROTATION``; ``fused_rotation=``): one kernel,
``kernels/mamba3_ssd_fwd.py``, turns the group's B and C in registers chunk by chunk, builds the trapezoid's
mask whole (γ_t on the diagonal: no correction) and applies D and the gate: about 370 MB of traffic where
this path moves 1.0 GB. With gradients (``_FusedScan``) the backward recomputes k̃, q and the tiles' angles
with the rotation kernel, then runs ``_Scan``'s backward (``_scan_backward``). Measured on an H100 (torch
2.11, Triton 3.6; benchmarks/sweep_mamba3.py at B4 L4096 H32 P64 N128 bf16): the forward 664 us where the path
above takes 1151 us (mamba_ssm's mamba3_siso_combined: 713-717 us on the same GPU in an earlier run), but
forward and backward 4848 us against 4687 us: the recomputation costs more than the fused forward saves. So
by default (``FUSED_ROTATION = "no_grad"``) it runs only where no gradient is needed.

Not covered (the fused kernel takes them): MIMO, and float16, where r (about
1 / |A|) can push k̃ past float16's range.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2, num_sms, sum_parts
from ._pairs import pairs_at, put_pairs

__all__ = ["mamba3_ssd", "rotate", "supported"]

TINY = 1e-30  # Δ̃ floor: the decay exp(-1e-30) is 1 in float32, and r stays finite


@triton.jit
def _phi_tile(theta_ptr, dt_ptr, psi, row, h, H, N2, i, t_ok, i_ok):
    """θ Δ of a tile and the angles Φ = Ψ + their running sum down the tile (float32)."""
    dt = tl.load(dt_ptr + row * H + h, mask=t_ok, other=0.0).to(tl.float32)  # (BLOCK_L,)
    th = tl.load(theta_ptr + (row * H + h)[:, None] * N2 + i[None, :], mask=t_ok[:, None] & i_ok[None, :],
                 other=0.0).to(tl.float32)  # (BLOCK_L, BLOCK_I)
    inc = th * dt[:, None]
    return th, dt, inc, psi[None, :] + tl.cumsum(inc, axis=0)


@triton.jit
def _rotate_store(B_ptr, C_ptr, r_ptr, k_ptr, q_ptr, phi, row, h, H, G, N2, i, t_ok, i_ok,
                  JOINED: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_I: tl.constexpr):
    """k̃ = r Rot(Φ) B and q = Rot(Φ) C of a tile's rows (BLOCK_L,) and pairs (BLOCK_I,), stored in k's dtype.

    JOINED: B, C read and k̃, q written as contiguous rows of 2 BLOCK_I entries, split into even and odd
    entries in registers (``kernels/_pairs.py``); else the even and the odd entries are read and written apart,
    every other element, one 2-byte access each in bfloat16."""
    g = h // (H // G)
    N = 2 * N2
    cs, sn = tl.cos(phi), tl.sin(phi)
    r = tl.load(r_ptr + row * H + h, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m = t_ok[:, None] & i_ok[None, :]
    src, dst, c0 = (row * G + g) * N, (row * H + h) * N, 2 * tl.program_id(1) * BLOCK_I  # rows; first entry
    be, bo = pairs_at(B_ptr, src, t_ok, c0, i, m, N, JOINED, BLOCK_L, BLOCK_I)
    put_pairs(k_ptr, dst, t_ok, c0, i, m, N, (be * cs - bo * sn) * r, (be * sn + bo * cs) * r, JOINED, False,
              BLOCK_L, BLOCK_I)
    ce, co = pairs_at(C_ptr, src, t_ok, c0, i, m, N, JOINED, BLOCK_L, BLOCK_I)
    put_pairs(q_ptr, dst, t_ok, c0, i, m, N, ce * cs - co * sn, ce * sn + co * cs, JOINED, False, BLOCK_L, BLOCK_I)


@triton.jit
def _rotate_fwd(B_ptr, C_ptr, theta_ptr, dt_ptr, r_ptr, psi0_ptr, k_ptr, q_ptr, psi_tiles_ptr, psiT_ptr,
                L, H, G, N2, n_tiles,
                HAS_PSI0: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_I: tl.constexpr, JOINED: tl.constexpr = False):
    pid = tl.program_id(0)  # batch * H + head
    bi, h = pid // H, pid % H
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)  # angle pairs
    i_ok = i < N2
    if HAS_PSI0:
        psi = tl.load(psi0_ptr + pid * N2 + i, mask=i_ok, other=0.0).to(tl.float32)
    else:
        psi = tl.zeros([BLOCK_I], dtype=tl.float32)
    for c in range(0, n_tiles):
        tl.store(psi_tiles_ptr + (pid * n_tiles + c).to(tl.int64) * N2 + i, psi, mask=i_ok)  # for the backward
        t = c * BLOCK_L + tl.arange(0, BLOCK_L)
        t_ok = t < L
        row = (bi * L + t).to(tl.int64)
        th, dt, inc, phi = _phi_tile(theta_ptr, dt_ptr, psi, row, h, H, N2, i, t_ok, i_ok)
        _rotate_store(B_ptr, C_ptr, r_ptr, k_ptr, q_ptr, phi, row, h, H, G, N2, i, t_ok, i_ok, JOINED, BLOCK_L,
                      BLOCK_I)
        psi = psi + tl.sum(inc, axis=0)
        psi = psi - 6.283185307179586 * tl.floor(psi * 0.15915494309189535)  # in [0, 2π): float32 keeps digits
    tl.store(psiT_ptr + pid * N2 + i, psi, mask=i_ok)


@triton.jit
def _tile_sums(theta_ptr, dt_ptr, sums_ptr, L, H, N2, n_tiles, BLOCK_L: tl.constexpr, BLOCK_I: tl.constexpr):
    """Σ θ_t Δ_t over one tile of BLOCK_L rows, per angle pair: sums (b H, n_tiles, N/2), float32."""
    pid, c = tl.program_id(0), tl.program_id(2)  # batch * H + head, tile
    bi, h = pid // H, pid % H
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < N2
    t = c * BLOCK_L + tl.arange(0, BLOCK_L)
    row = (bi * L + t).to(tl.int64)
    _, _, inc, _ = _phi_tile(theta_ptr, dt_ptr, tl.zeros([BLOCK_I], dtype=tl.float32), row, h, H, N2, i, t < L,
                             i_ok)
    tl.store(sums_ptr + (pid * n_tiles + c).to(tl.int64) * N2 + i, tl.sum(inc, axis=0), mask=i_ok)


@triton.jit
def _rotate_tiles(B_ptr, C_ptr, theta_ptr, dt_ptr, r_ptr, k_ptr, q_ptr, psi_tiles_ptr, L, H, G, N2, n_tiles,
                  BLOCK_L: tl.constexpr, BLOCK_I: tl.constexpr, JOINED: tl.constexpr = False):
    """One tile of ``_rotate_fwd``'s walk, from the angle entering it (psi_tiles): every tile at once."""
    pid, c = tl.program_id(0), tl.program_id(2)  # batch * H + head, tile
    bi, h = pid // H, pid % H
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < N2
    psi = tl.load(psi_tiles_ptr + (pid * n_tiles + c).to(tl.int64) * N2 + i, mask=i_ok, other=0.0)
    t = c * BLOCK_L + tl.arange(0, BLOCK_L)
    t_ok = t < L
    row = (bi * L + t).to(tl.int64)
    _, _, _, phi = _phi_tile(theta_ptr, dt_ptr, psi, row, h, H, N2, i, t_ok, i_ok)
    _rotate_store(B_ptr, C_ptr, r_ptr, k_ptr, q_ptr, phi, row, h, H, G, N2, i, t_ok, i_ok, JOINED, BLOCK_L, BLOCK_I)


@triton.jit
def _grad_parts(ptr, n_parts, row_stride, row, h, H, N, t_ok, c0, i, m, JOINED: tl.constexpr,
                BLOCK_L: tl.constexpr, BLOCK_I: tl.constexpr, UNROLL: tl.constexpr = False):
    """A gradient given as n_parts parts (b, L, n_parts, H, N), rows row_stride elements apart, summed at a
    tile's rows (BLOCK_L,) and pairs (BLOCK_I,): its even and its odd entries, float32 (BLOCK_L, BLOCK_I)
    each; zero for n_parts = 0 (``pairs_at`` reads each part). UNROLL (n_parts a constexpr): no loop over
    the parts, so that a loop around this one is the innermost (the one Triton pipelines)."""
    base = row * row_stride + h * N  # (BLOCK_L,) part 0 of each row
    even = tl.zeros([BLOCK_L, BLOCK_I], dtype=tl.float32)
    odd = tl.zeros([BLOCK_L, BLOCK_I], dtype=tl.float32)
    if UNROLL:
        for j in tl.static_range(n_parts):
            e, o = pairs_at(ptr, base + j * (H * N), t_ok, c0, i, m, N, JOINED, BLOCK_L, BLOCK_I)
            even += e
            odd += o
    else:
        for j in range(0, n_parts):
            e, o = pairs_at(ptr, base + j * (H * N), t_ok, c0, i, m, N, JOINED, BLOCK_L, BLOCK_I)
            even += e
            odd += o
    return even, odd


@triton.jit
def _rotate_bwd(B_ptr, C_ptr, theta_ptr, dt_ptr, r_ptr, psi_tiles_ptr, dk_ptr, dq_ptr, gpsi_ptr, bounds_ptr,
                dB_ptr, dC_ptr, dtheta_ptr, ddt_ptr, dr_ptr, dpsi0_ptr,
                L, H, G, N2, n_tiles, n_iblk, Q, n_dk, n_dq, dk_row, dq_row,
                HAS_GPSI: tl.constexpr, HAS_BOUNDS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_I: tl.constexpr,
                TILES: tl.constexpr = False, JOINED: tl.constexpr = False):
    # TILES (with HAS_BOUNDS and tiles of one chunk each): one program per tile, program_id(2), the carry of
    # every tile but the last loaded from the boundary sums; without it one program walks all the tiles.
    # dL/dk̃ and dL/dq come as n_dk and n_dq parts (b, L, parts, H, N), rows dk_row and dq_row elements apart
    # (SSD's backward's float32 parts, unsummed), summed as they are loaded (``_grad_parts``)
    pid = tl.program_id(0)
    pi = tl.program_id(1)
    bi, h = pid // H, pid % H
    g = h // (H // G)
    i = pi * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < N2
    N = 2 * N2
    if HAS_GPSI:  # the final angle's gradient reaches every Φ_t
        carry = tl.load(gpsi_ptr + pid * N2 + i, mask=i_ok, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([BLOCK_I], dtype=tl.float32)
    first, stop = 0, n_tiles
    if TILES:
        first, stop = n_tiles - 1 - tl.program_id(2), n_tiles - tl.program_id(2)
    for cc in range(first, stop):  # tiles in reverse: carry = Σ of dΦ over the later tiles
        c = n_tiles - 1 - cc
        if HAS_BOUNDS:  # the tile ends at a chunk boundary u < L: the carry is the sum at u, from SSD's states
            u = (c + 1) * BLOCK_L
            at = (u % Q == 0) & (u < L)
            # other=carry, not a tl.where after the load: compiled for sm_90 the where spilled 8 bytes
            carry = tl.load(bounds_ptr + (pid * tl.cdiv(L, Q) + u // Q).to(tl.int64) * N2 + i, mask=i_ok & at,
                            other=carry)
        psi = tl.load(psi_tiles_ptr + (pid * n_tiles + c).to(tl.int64) * N2 + i, mask=i_ok, other=0.0)
        t = c * BLOCK_L + tl.arange(0, BLOCK_L)
        t_ok = t < L
        row = (bi * L + t).to(tl.int64)
        th, dt, inc, phi = _phi_tile(theta_ptr, dt_ptr, psi, row, h, H, N2, i, t_ok, i_ok)  # as the forward
        cs, sn = tl.cos(phi), tl.sin(phi)
        m = t_ok[:, None] & i_ok[None, :]
        r = tl.load(r_ptr + row * H + h, mask=t_ok, other=0.0).to(tl.float32)
        # the keys, then the queries (fewer values live at once): each turned by Φ, its gradient turned back by
        # -Φ into dB or dC (summed over the group's heads), and its part of dΦ
        c0 = 2 * pi * BLOCK_I  # the tile's first entry of each row
        src = (row * G + g) * N  # (BLOCK_L,) rows of B and C
        be, bo = pairs_at(B_ptr, src, t_ok, c0, i, m, N, JOINED, BLOCK_L, BLOCK_I)
        gke, gko = _grad_parts(dk_ptr, n_dk, dk_row, row, h, H, N, t_ok, c0, i, m, JOINED, BLOCK_L, BLOCK_I)
        ke, ko = be * cs - bo * sn, be * sn + bo * cs  # k = Rot(Φ) B, before the scale r
        tl.store(dr_ptr + (row * H + h) * n_iblk + pi, tl.sum(gke * ke + gko * ko, axis=1), mask=t_ok)
        gke, gko = gke * r[:, None], gko * r[:, None]  # dL/dk
        # Rot(Φ)ᵀ dk = (ge cos + go sin, go cos - ge sin), added atomically (summed over the group's heads)
        put_pairs(dB_ptr, src, t_ok, c0, i, m, N, gke * cs + gko * sn, gko * cs - gke * sn, JOINED, True,
                  BLOCK_L, BLOCK_I)
        # d(u cos - v sin, u sin + v cos)/dΦ = (-(u sin + v cos), u cos - v sin): (-ko, ke)
        dphi = gko * ke - gke * ko  # (BLOCK_L, BLOCK_I)
        ce, co = pairs_at(C_ptr, src, t_ok, c0, i, m, N, JOINED, BLOCK_L, BLOCK_I)
        gqe, gqo = _grad_parts(dq_ptr, n_dq, dq_row, row, h, H, N, t_ok, c0, i, m, JOINED, BLOCK_L, BLOCK_I)
        qe, qo = ce * cs - co * sn, ce * sn + co * cs
        put_pairs(dC_ptr, src, t_ok, c0, i, m, N, gqe * cs + gqo * sn, gqo * cs - gqe * sn, JOINED, True,
                  BLOCK_L, BLOCK_I)
        dphi += gqo * qe - gqe * qo
        total = tl.sum(dphi, axis=0)
        after = carry[None, :] + total[None, :] - tl.cumsum(dphi, axis=0) + dphi  # Σ_{s>=t} dΦ_s
        tl.store(dtheta_ptr + (row * H + h)[:, None] * N2 + i[None, :], after * dt[:, None], mask=m)
        tl.store(ddt_ptr + (row * H + h) * n_iblk + pi, tl.sum(after * th, axis=1), mask=t_ok)
        carry = carry + total
    if TILES:  # the first tile's program holds dΦ_{-1}
        tl.store(dpsi0_ptr + pid * N2 + i, carry, mask=i_ok & (tl.program_id(2) == 0))
    else:
        tl.store(dpsi0_ptr + pid * N2 + i, carry, mask=i_ok)


@triton.jit
def _rotate_bwd_heads(B_ptr, C_ptr, theta_ptr, dt_ptr, r_ptr, psi_tiles_ptr, dk_ptr, dq_ptr, gpsi_ptr, bounds_ptr,
                      dB_ptr, dC_ptr, dtheta_ptr, ddt_ptr, dr_ptr, dpsi0_ptr,
                      L, H, G, N2, n_tiles, n_iblk, n_hblk, dk_row, dq_row,
                      N_DK: tl.constexpr, N_DQ: tl.constexpr, HEADS: tl.constexpr, HAS_GPSI: tl.constexpr,
                      BLOCK_L: tl.constexpr, BLOCK_I: tl.constexpr, JOINED: tl.constexpr, ATOMIC: tl.constexpr,
                      STAGES: tl.constexpr = 1):
    # ``_rotate_bwd``'s tiled form (tiles = SSD's chunks, every carry from the boundary sums) with one program
    # per (batch, group, block of HEADS heads; block of pairs; tile): B's and C's tile loaded once, dB and dC
    # summed over the heads in registers and stored once, plainly when one program has all the group's heads
    # (n_hblk = 1), else added atomically (ATOMIC). Per head: θ, Δ, r, the entering angle, the carry, the parts
    # of dL/dk̃ and dL/dq, and the stores of dθ, dΔ's and dr's parts and dΦ_{-1}. The parts' loops unrolled
    # (N_DK, N_DQ constexpr): the head loop is the innermost, its loads independent of the previous head's, and
    # with STAGES > 1 Triton pipelines them (through shared memory: 75 KB at 3 stages, compiled for sm_90).
    pid, pi = tl.program_id(0), tl.program_id(1)  # (batch * G + group) * n_hblk + block of heads; pairs
    c = tl.program_id(2)  # the tile
    bg, hb = pid // n_hblk, pid % n_hblk
    bi, g = bg // G, bg % G
    head0 = g * (H // G) + hb * HEADS
    i = pi * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < N2
    N = 2 * N2
    t = c * BLOCK_L + tl.arange(0, BLOCK_L)
    t_ok = t < L
    row = (bi * L + t).to(tl.int64)
    m = t_ok[:, None] & i_ok[None, :]
    c0 = 2 * pi * BLOCK_I  # the tile's first entry of each row
    src = (row * G + g) * N  # (BLOCK_L,) rows of B and C
    be, bo = pairs_at(B_ptr, src, t_ok, c0, i, m, N, JOINED, BLOCK_L, BLOCK_I)
    ce, co = pairs_at(C_ptr, src, t_ok, c0, i, m, N, JOINED, BLOCK_L, BLOCK_I)
    dbe = tl.zeros([BLOCK_L, BLOCK_I], dtype=tl.float32)
    dbo = tl.zeros([BLOCK_L, BLOCK_I], dtype=tl.float32)
    dce = tl.zeros([BLOCK_L, BLOCK_I], dtype=tl.float32)
    dco = tl.zeros([BLOCK_L, BLOCK_I], dtype=tl.float32)
    at = (c + 1) * BLOCK_L < L  # the tile ends at a chunk boundary: its carry is the boundary's sum
    for j in tl.range(0, HEADS, num_stages=STAGES):  # STAGES > 1: the next heads' loads in flight (cp.async)
        h = head0 + j
        ph = bi * H + h
        if HAS_GPSI:  # the last tile's carry: the final angle's gradient
            carry = tl.load(gpsi_ptr + ph * N2 + i, mask=i_ok & ((c + 1) * BLOCK_L >= L),
                            other=0.0).to(tl.float32)
        else:
            carry = tl.zeros([BLOCK_I], dtype=tl.float32)
        carry = tl.load(bounds_ptr + (ph * n_tiles + c + 1).to(tl.int64) * N2 + i, mask=i_ok & at, other=carry)
        psi = tl.load(psi_tiles_ptr + (ph * n_tiles + c).to(tl.int64) * N2 + i, mask=i_ok, other=0.0)
        th, dt, inc, phi = _phi_tile(theta_ptr, dt_ptr, psi, row, h, H, N2, i, t_ok, i_ok)
        cs, sn = tl.cos(phi), tl.sin(phi)
        r = tl.load(r_ptr + row * H + h, mask=t_ok, other=0.0).to(tl.float32)
        gke, gko = _grad_parts(dk_ptr, N_DK, dk_row, row, h, H, N, t_ok, c0, i, m, JOINED, BLOCK_L, BLOCK_I, True)
        ke, ko = be * cs - bo * sn, be * sn + bo * cs  # k = Rot(Φ) B, before the scale r
        tl.store(dr_ptr + (row * H + h) * n_iblk + pi, tl.sum(gke * ke + gko * ko, axis=1), mask=t_ok)
        gke, gko = gke * r[:, None], gko * r[:, None]  # dL/dk
        dbe += gke * cs + gko * sn  # Rot(Φ)ᵀ dk, summed over the heads
        dbo += gko * cs - gke * sn
        dphi = gko * ke - gke * ko  # (BLOCK_L, BLOCK_I)
        gqe, gqo = _grad_parts(dq_ptr, N_DQ, dq_row, row, h, H, N, t_ok, c0, i, m, JOINED, BLOCK_L, BLOCK_I, True)
        qe, qo = ce * cs - co * sn, ce * sn + co * cs
        dce += gqe * cs + gqo * sn
        dco += gqo * cs - gqe * sn
        dphi += gqo * qe - gqe * qo
        total = tl.sum(dphi, axis=0)
        after = carry[None, :] + total[None, :] - tl.cumsum(dphi, axis=0) + dphi  # Σ_{s>=t} dΦ_s
        tl.store(dtheta_ptr + (row * H + h)[:, None] * N2 + i[None, :], after * dt[:, None], mask=m)
        tl.store(ddt_ptr + (row * H + h) * n_iblk + pi, tl.sum(after * th, axis=1), mask=t_ok)
        tl.store(dpsi0_ptr + ph * N2 + i, carry + total, mask=i_ok & (c == 0))  # the first tile: dΦ_{-1}
    put_pairs(dB_ptr, src, t_ok, c0, i, m, N, dbe, dbo, JOINED, ATOMIC, BLOCK_L, BLOCK_I)
    put_pairs(dC_ptr, src, t_ok, c0, i, m, N, dce, dco, JOINED, ATOMIC, BLOCK_L, BLOCK_I)


def _blocks(N2, Q=None):
    """Rows of a tile and angle pairs per program: small tiles, several programs per head on a GPU. With Q
    (the SSD backward's chunk length, a power of two >= 16) the tiles divide the chunks."""
    rows, pairs = (16, 32) if interpreting() else (64, 16)
    return (rows if Q is None else min(rows, Q)), max(2, min(next_pow2(N2), pairs))


# The rotation's default form: "walk" (``_rotate_fwd``), "tiles" (``_rotate_tiles``, and the backward's tiles in
# parallel) or "joined" ("tiles" with contiguous rows of B, C, k̃, q split into pairs in registers, forward and
# backward). Measured at B4 L4096 H32 P64 N128 bf16 (benchmarks/sweep_mamba3.py, the whole path): on an H100
# "tiles" 2925 us forward, 12000 us forward and backward, against 2963 and 13004 us for the walk; on an H200
# (all three in one run) "joined" 1214 and 5187 us, "tiles" 2577 and 10025 us, the walk 2601 and 11243 us.
ROTATE = "joined"
# The forward with the rotation inside the chunk walk (kernels/mamba3_ssd_fwd.py; the docstring has its
# measurements): "no_grad", the fused kernel where no gradient is needed and the path above where one is;
# True: the fused kernel always (``_FusedScan`` with gradients); False: never.
FUSED_ROTATION = "no_grad"
FORMS = ("walk", "tiles", "joined")
TILED = ("tiles", "joined")  # the forms that run every tile at once
MAX_TILES = 65535  # "tiles" puts the tiles on a grid's third dimension, which holds no more; past it, the walk


# The rotation's backward in tiles with one program per (batch, group, block of heads) instead of per head
# (``_rotate_bwd_heads``): B's and C's tiles read once, dB and dC summed over the heads in registers and stored
# without atomics. True: the automatic choice (``_auto_heads``), measured faster (the docstring); False: one
# head a program (``_rotate_bwd``).
ROT_BWD_HEADS = True
ROT_BWD_STAGES = 3  # the head loop's pipeline depth (1: no loads ahead)
PROGRAMS_PER_SM = 4  # the automatic choice keeps at least this many of the head loop's programs per SM


def _auto_heads(hpg, grid, device):
    """Heads per program of ``_rotate_bwd_heads``: all the group's heads (``hpg``; plain stores), halved while
    the grid (``grid`` programs at one block of heads per group) would have fewer than PROGRAMS_PER_SM
    programs per SM. At B4 L4096 H32 N128 G1 on an H200 (132 SMs): 4 x 4 x 64 = 1024 programs, 7.8 per SM:
    all 32 heads."""
    sms = num_sms(device)
    heads = hpg
    while heads % 2 == 0 and grid * (hpg // heads) < PROGRAMS_PER_SM * sms:
        heads //= 2
    return heads


def _bwd_option(rotate, key, default):
    """A launch option of the rotation's backward from ``rotate`` (a dict), or ``default``."""
    value = rotate.get(key) if isinstance(rotate, dict) else None
    return default if value is None else value


def _bwd_heads(rotate):
    """Heads per program of the rotation's tiled backward from ``rotate`` (a form, or a dict with "form" and
    "bwd_heads"): 1 the launch per head (``_rotate_bwd``), 0 the automatic choice, k > 1 blocks of k heads
    (``_rotate_bwd_heads``); ``ROT_BWD_HEADS`` when not given (False: 1, True: 0)."""
    heads = _bwd_option(rotate, "bwd_heads", 0 if ROT_BWD_HEADS else 1)
    if not isinstance(heads, int) or heads < 0:
        raise ValueError(f"bwd_heads must be an integer >= 0 (0: automatic); got {heads!r}")
    return heads


def _form(form):
    """The rotation's form (``ROTATE`` for None), refused with a clear error if unknown. ``form`` may be a dict
    with "form" and the backward's launch options "bwd_heads" (``_bwd_heads``) and "bwd_stages" (the head
    loop's pipeline depth, ``ROT_BWD_STAGES`` by default)."""
    if isinstance(form, dict):
        unknown = set(form) - {"form", "bwd_heads", "bwd_stages"}
        if unknown:
            raise ValueError(f"the rotation's options are 'form', 'bwd_heads' and 'bwd_stages'; got {sorted(unknown)}")
        _bwd_heads(form)
        form = form.get("form")
    form = form or ROTATE
    if form not in FORMS:
        raise ValueError(f"the rotation's form must be one of {', '.join(map(repr, FORMS))}; got {form!r}")
    return form


def _rotate_forward(B, C, theta, dt, r, psi0, out_dtype, BLOCK_L, BLOCK_I, form=None):
    """Launch the forward rotation (inputs contiguous): k̃, q, the last angle, and the angle entering every tile.

    ``form`` (``ROTATE`` by default): "walk", one program per (batch, head, block of pairs) walking the tiles
    in order and carrying the angle (``_rotate_fwd``); or "tiles", three steps with every tile in parallel:
    the tiles' sums of θ Δ (``_tile_sums``), their running sum in float64 on the host (b H n_tiles N/2
    numbers, reduced mod 2π), then each tile from its entering angle (``_rotate_tiles``). The walk has b H
    N/2 / 16 programs and a chain of L / BLOCK_L dependent steps; "tiles" reads θ and Δ twice, and has
    L / BLOCK_L times the programs. "joined" is "tiles" with each row's 2 BLOCK_I entries of B, C, k̃ and q
    moved as one contiguous block (vector accesses) and split into even and odd entries in registers,
    instead of two interleaved 2-byte accesses a pair (``_rotate_store``).
    """
    form = _form(form)
    joined = form == "joined"
    b, L, G, N = B.shape
    H, N2 = theta.shape[2], N // 2
    n_tiles, n_iblk = triton.cdiv(L, BLOCK_L), triton.cdiv(N2, BLOCK_I)
    if n_tiles > MAX_TILES:  # L > 4M at 64 rows
        form = "walk"
    k = torch.empty(b, L, H, N, device=B.device, dtype=out_dtype)
    q = torch.empty_like(k)
    f32 = dict(device=B.device, dtype=torch.float32)
    psi_tiles = torch.empty(b, H, n_tiles, N2, **f32)
    psiT = torch.empty(b, H, N2, **f32)
    extra = {} if interpreting() else dict(num_warps=4)
    if form in TILED:
        sums = torch.empty(b, H, n_tiles, N2, **f32)
        _tile_sums[(b * H, n_iblk, n_tiles)](theta, dt, sums, L, H, N2, n_tiles, BLOCK_L=BLOCK_L, BLOCK_I=BLOCK_I,
                                              **extra)
        run = torch.cumsum(sums.double(), dim=2)  # the angle after each tile, from Φ_{-1} = 0
        if psi0 is not None:
            run = run + psi0.double()[:, :, None]
        two_pi = 2 * torch.pi
        psi_tiles[:, :, 0] = 0.0 if psi0 is None else torch.remainder(psi0.double(), two_pi).float()
        psi_tiles[:, :, 1:] = torch.remainder(run[:, :, :-1], two_pi).float()
        psiT.copy_(torch.remainder(run[:, :, -1], two_pi))
        _rotate_tiles[(b * H, n_iblk, n_tiles)](B, C, theta, dt, r, k, q, psi_tiles, L, H, G, N2, n_tiles,
                                                BLOCK_L=BLOCK_L, BLOCK_I=BLOCK_I, JOINED=joined, **extra)
        return k, q, psiT, psi_tiles
    _rotate_fwd[(b * H, n_iblk)](B, C, theta, dt, r, k if psi0 is None else psi0.contiguous(), k, q, psi_tiles,
                                 psiT, L, H, G, N2, n_tiles, HAS_PSI0=psi0 is not None,
                                 BLOCK_L=BLOCK_L, BLOCK_I=BLOCK_I, JOINED=joined, **extra)
    return k, q, psiT, psi_tiles


def _rotate_backward(B, C, theta, dt, r, psi_tiles, gk, gq, gpsi, BLOCK_L, BLOCK_I, bounds=None, Q=0, form=None):
    """Launch ``_rotate_bwd``: float32 dB, dC, dθ, dΔ, dr and dΦ_{-1}. ``gk``, ``gq``: dL/dk̃ and dL/dq, each
    None (zero), (b, L, H, N), or parts (b, L, parts, H, N) that sum to it (SSD's backward's, float32). With
    ``bounds`` (b, H, cdiv(L, Q), N/2), the sums of dΦ from every chunk boundary on (dΦ_T included), the walk
    restarts from them at each boundary; then if the tiles are the chunks and ``form`` (``ROTATE`` by default)
    is "tiles" or "joined", every tile runs at once ("joined": with contiguous rows, as the forward's). Every
    tile at once, ``form`` as a dict may add "bwd_heads" (``_bwd_heads``; ``ROT_BWD_HEADS`` by default): k > 1
    heads of a group a program (``_rotate_bwd_heads``: dB, dC summed in registers, stored plainly when k is the
    group's heads), 0 the automatic choice (``_auto_heads``); and "bwd_stages", its loop's pipeline depth.

    Traffic the parts save at B4 L4096 H32 P64 N128 (268 MB a part; three of dL/dk̃, one of dL/dq): summed
    in PyTorch first they moved 3.2 GB and this kernel then read 0.54 GB; read here, 1.07 GB. dΔ's and dr's
    parts over the blocks of pairs share one buffer: one reduction (b L H n_iblk: 8 MB each read) for both."""
    b, L, G, N = B.shape
    H, N2 = theta.shape[2], N // 2
    n_tiles, n_iblk = triton.cdiv(L, BLOCK_L), triton.cdiv(N2, BLOCK_I)
    assert bounds is None or Q % BLOCK_L == 0, (Q, BLOCK_L)
    f32 = dict(device=B.device, dtype=torch.float32)
    dtheta = torch.empty(b, L, H, N2, **f32)
    (n_dk, dk_row, gk), (n_dq, dq_row, gq) = (_parts(g, dtheta) for g in (gk, gq))  # None: nothing read
    dB, dC = torch.empty(b, L, G, N, **f32), torch.empty(b, L, G, N, **f32)  # zeroed where summed atomically
    ddt_dr = torch.empty(2, b, L, H, n_iblk, **f32)  # dΔ, dr: one part per block of pairs
    dpsi0 = torch.empty(b, H, N2, **f32)
    extra = {} if interpreting() else dict(num_warps=4)
    heads, form_arg = _bwd_heads(form), form
    form = _form(form)
    tiles = form in TILED and bounds is not None and BLOCK_L == Q and n_tiles <= MAX_TILES
    if tiles and heads != 1:
        hpg = H // G
        heads = heads or _auto_heads(hpg, b * G * n_iblk * n_tiles, B.device)
        if hpg % heads:
            raise ValueError(f"bwd_heads must divide the heads per group ({hpg}); got {heads}")
    if tiles and heads > 1:  # one program per (batch, group, block of heads; pairs; tile)
        n_hblk = hpg // heads
        if n_hblk > 1:
            dB.zero_(), dC.zero_()
        _rotate_bwd_heads[(b * G * n_hblk, n_iblk, n_tiles)](
            B, C, theta, dt, r, psi_tiles, gk, gq, dtheta if gpsi is None else gpsi.contiguous(),
            bounds.contiguous(), dB, dC, dtheta, ddt_dr[0], ddt_dr[1], dpsi0,
            L, H, G, N2, n_tiles, n_iblk, n_hblk, dk_row, dq_row, N_DK=n_dk, N_DQ=n_dq, HEADS=heads,
            HAS_GPSI=gpsi is not None, BLOCK_L=BLOCK_L, BLOCK_I=BLOCK_I, JOINED=form == "joined",
            ATOMIC=n_hblk > 1, STAGES=_bwd_option(form_arg, "bwd_stages", ROT_BWD_STAGES), **extra)
        ddt, dr = sum_parts(ddt_dr, -1)
        return dB, dC, dtheta, ddt, dr, dpsi0
    dB.zero_(), dC.zero_()
    _rotate_bwd[(b * H, n_iblk, n_tiles if tiles else 1)](
        B, C, theta, dt, r, psi_tiles, gk, gq, dtheta if gpsi is None else gpsi.contiguous(),
        dtheta if bounds is None else bounds.contiguous(), dB, dC, dtheta, ddt_dr[0], ddt_dr[1], dpsi0,
        L, H, G, N2, n_tiles, n_iblk, Q, n_dk, n_dq, dk_row, dq_row, HAS_GPSI=gpsi is not None,
        HAS_BOUNDS=bounds is not None, BLOCK_L=BLOCK_L, BLOCK_I=BLOCK_I, TILES=tiles, JOINED=form == "joined",
        **extra)
    ddt, dr = sum_parts(ddt_dr, -1)
    return dB, dC, dtheta, ddt, dr, dpsi0


def _parts(g, dummy):
    """A gradient for ``_rotate_bwd``, (b, L, H, N), or parts (b, L, parts, H, N) (SSD's, views of a larger
    buffer): (the number of parts, the stride of its rows, the tensor with each row's parts contiguous)."""
    if g is None:
        return 0, 0, dummy
    if g.dim() == 4:
        g = g[:, :, None]
    if g[0, 0].is_contiguous() and g.stride(0) == g.shape[1] * g.stride(1):  # rows (batch, time) evenly apart
        return g.shape[2], g.stride(1), g
    return g.shape[2], g[0, 0].numel(), g.contiguous()


class _Rotate(torch.autograd.Function):
    """The rotation alone (``rotate``): its backward sums dΦ over all the later tiles."""

    @staticmethod
    def forward(ctx, out_dtype, B, C, theta, dt, r, psi0):
        B, C, theta, dt, r = (t.contiguous() for t in (B, C, theta, dt, r))
        k, q, psiT, psi_tiles = _rotate_forward(B, C, theta, dt, r, psi0, out_dtype, *_blocks(B.shape[-1] // 2))
        ctx.save_for_backward(B, C, theta, dt, r, psi_tiles)
        ctx.has_psi0 = psi0 is not None
        ctx.set_materialize_grads(False)
        return k, q, psiT

    @staticmethod
    def backward(ctx, gk, gq, gpsi):
        B, C, theta, dt, r, psi_tiles = ctx.saved_tensors
        dB, dC, dtheta, ddt, dr, dpsi0 = _rotate_backward(B, C, theta, dt, r, psi_tiles, gk, gq, gpsi,
                                                          *_blocks(B.shape[-1] // 2))
        return (None, dB.to(B.dtype), dC.to(C.dtype), dtheta.to(theta.dtype), ddt.to(dt.dtype), dr.to(r.dtype),
                dpsi0 if ctx.has_psi0 else None)


def _turn(dh, h):
    """<dh, J h> per angle pair, summed over P: (b, H, P, N) -> (b, H, N/2) float32; J(e, o) = (-o, e)."""
    dh, h = dh.float(), h.float()
    return (dh[..., 1::2] * h[..., 0::2] - dh[..., 0::2] * h[..., 1::2]).sum(2)


class _Scan(torch.autograd.Function):
    """The rotation, then SSD's forward (z-free) and the diagonal's correction y += coef x (coef (b, L, H)
    float32, applied in x's dtype), as one function: its backward hands the rotation SSD's float32 gradients
    of k̃ and q (as SSD's parts) and the sums of dΦ at the chunk boundaries, from SSD's states.

    The correction inside, not an ``addcmul`` after it: x's gradient is SSD's dx + coef dy in one pass
    (B4 L4096 H32 P64 bf16: reads dx, dy, writes 201 MB), where autograd wrote coef dy (134 MB) and then
    added SSD's (201 MB); coef's, Σ_p dy x, is summed in float32, not rounded to bfloat16."""

    @staticmethod
    def forward(ctx, chunk_size, return_final_state, rotate, B, C, theta, dt, r, psi0, x, dts, D, h0, coef):
        from .ssd import bwd_chunk_len, ssd_fwd

        B, C, theta, dt, r = (t.contiguous() for t in (B, C, theta, dt, r))
        blocks = _blocks(B.shape[-1] // 2, bwd_chunk_len(chunk_size, x.dtype, B.shape[-1]))
        k, q, psiT, psi_tiles = _rotate_forward(B, C, theta, dt, r, psi0, x.dtype, *blocks, form=rotate)
        minus_one = torch.full((x.shape[2],), -1.0, device=x.device, dtype=torch.float32)
        y, hT = ssd_fwd(x, dts, minus_one, k, q, chunk_size, D=D, initial_states=h0,
                        return_final_states=return_final_state, final_dtype=torch.float32)
        coef = coef.to(x.dtype)[..., None]
        y.addcmul_(x, coef)  # one pass over y
        ctx.save_for_backward(B, C, theta, dt, r, psi_tiles, x, dts, D, h0, k, q, hT, minus_one, coef)
        ctx.chunk_size, ctx.blocks, ctx.has_psi0, ctx.rotate = chunk_size, blocks, psi0 is not None, rotate
        ctx.set_materialize_grads(False)
        return y, hT, psiT

    @staticmethod
    def backward(ctx, gy, ghT, gpsi):
        B, C, theta, dt, r, psi_tiles, x, dts, D, h0, k, q, hT, minus_one, coef = ctx.saved_tensors
        return _scan_backward(ctx, gy, ghT, gpsi, B, C, theta, dt, r, psi_tiles, x, dts, D, h0, k, q, hT,
                              minus_one, coef)


def _scan_backward(ctx, gy, ghT, gpsi, B, C, theta, dt, r, psi_tiles, x, dts, D, h0, k, q, hT, minus_one, coef):
    """``_Scan``'s backward, given its saved tensors (k̃, q and the tiles' angles: saved, or recomputed)."""
    from .ssd import ssd_bwd

    g = ssd_bwd(gy, ghT, x, dts, minus_one, k, q, ctx.chunk_size, D=D, initial_states=h0, ddt_decay_only=True,
                turns=True)
    # G_u = Σ_{s>=u} dΦ_s = -<dS_u, J S_u> + <dh_T, J h_T> at every chunk's start u, plus dΦ_T: the last two
    # summed first, (b, H, N/2), then one addition over the chunks
    final = _turn(ghT, hT) if ghT is not None else None
    if gpsi is not None:
        final = gpsi if final is None else final + gpsi
    bounds = g["turns"] if final is None else g["turns"] + final[:, :, None]
    # dL/dk̃ and dL/dq as SSD's float32 parts, summed by the rotation's kernel as it reads them
    dB, dC, dtheta, ddt, dr, dpsi0 = _rotate_backward(B, C, theta, dt, r, psi_tiles, g["dB_parts"],
                                                      g["dC_parts"], gpsi, *ctx.blocks, bounds=bounds,
                                                      Q=g["chunk"], form=ctx.rotate)
    dx, dcoef = g["dx"], None
    if gy is not None:  # the correction's part: coef dy, and dcoef = Σ_p dy x
        dx = torch.addcmul(dx, gy, coef)
        dcoef = (gy * x).sum(-1, dtype=torch.float32)
    return (None, None, None, dB.to(B.dtype), dC.to(C.dtype), dtheta.to(theta.dtype), ddt.to(dt.dtype),
            dr.to(r.dtype), dpsi0 if ctx.has_psi0 else None, dx, g["ddt"], g.get("dD"),
            g.get("dinitial_states"), dcoef)


class _FusedScan(torch.autograd.Function):
    """``_Scan``'s function, its forward in one kernel with the rotation inside (``kernels/mamba3_ssd_fwd.py``,
    from Δ, A, λ in ``raw``: the same values as the SSD form's Δ̃, r and correction, up to rounding). Its
    backward recomputes k̃, q and the tiles' angles with the rotation kernel, then runs ``_Scan``'s: the
    rotation moves from the forward to the backward (once a step, as before), and k̃, q (2 x 134 MB at B4 L4096
    H32 N128 bf16) are neither read by the forward's SSD kernels nor kept alive between the passes."""

    @staticmethod
    def forward(ctx, chunk_size, return_final_state, rotate, raw, launch, B, C, theta, dt, r, psi0, x, dts, D, h0,
                coef):
        from .mamba3_ssd_fwd import fused_forward
        from .ssd import bwd_chunk_len

        B, C, theta, dt, r = (t.contiguous() for t in (B, C, theta, dt, r))
        y, hT, psiT = fused_forward(x, *raw, theta, B, C, D, None, h0, _reduced(psi0), chunk_size,
                                    return_final_state, **launch)
        ctx.save_for_backward(B, C, theta, dt, r, psi0, x, dts, D, h0, hT, coef.to(x.dtype)[..., None])
        ctx.chunk_size, ctx.has_psi0, ctx.rotate = chunk_size, psi0 is not None, rotate
        ctx.blocks = _blocks(B.shape[-1] // 2, bwd_chunk_len(chunk_size, x.dtype, B.shape[-1]))
        ctx.set_materialize_grads(False)
        return y, hT, psiT

    @staticmethod
    def backward(ctx, gy, ghT, gpsi):
        B, C, theta, dt, r, psi0, x, dts, D, h0, hT, coef = ctx.saved_tensors
        k, q, _, psi_tiles = _rotate_forward(B, C, theta, dt, r, psi0, x.dtype, *ctx.blocks, form=ctx.rotate)
        minus_one = torch.full((x.shape[2],), -1.0, device=x.device, dtype=torch.float32)
        grads = _scan_backward(ctx, gy, ghT, gpsi, B, C, theta, dt, r, psi_tiles, x, dts, D, h0, k, q, hT,
                               minus_one, coef)
        return (None,) * 5 + grads[3:]


def _reduced(psi0):
    """The initial angle mod 2π (in float64 first: the kernel adds to it in float32), or None."""
    return None if psi0 is None else torch.remainder(psi0.double(), 2 * torch.pi).float()


def rotate(B, C, theta, dt, r, psi0=None, out_dtype=None):
    """k̃ = r Rot(Φ) B and q = Rot(Φ) C per head, and the last angle: differentiable.

    B, C (b, L, G, N); theta (b, L, H, N/2); dt, r (b, L, H); psi0 (b, H, N/2)
    or None, the angle Φ_{-1}. Φ_t = Φ_{-1} + Σ_{s<=t} θ_s Δ_s. Returns k̃, q
    (b, L, H, N) in ``out_dtype`` (B's by default) and Φ_{L-1} mod 2π
    (b, H, N/2, float32).
    """
    return _Rotate.apply(out_dtype or B.dtype, B, C, theta, dt, r, psi0)


def supported(x):
    """Whether this path takes x: SISO (b, L, H, P) in float32 or bfloat16."""
    return x.dim() == 4 and x.dtype in (torch.float32, torch.bfloat16)


def mamba3_ssd(x, dt, A, B, C, lam, theta, D=None, z=None, chunk_size=64, initial_state=None,
               return_final_state=False, rotate=None, fused_rotation=None):
    """The SISO scan through the rotation and the SSD kernels; arguments and results as
    ``kernels.mamba3.mamba3_triton``. ``rotate``: the rotation's form ("walk", "tiles" or "joined",
    ``ROTATE`` by default; see ``_rotate_forward``), or a dict with "form" and the backward's launch options
    "bwd_heads" (heads per program of the tiled backward: 1 one head, 0 automatic; ``ROT_BWD_HEADS``) and
    "bwd_stages" (``_form``). ``fused_rotation`` (``FUSED_ROTATION`` by default):
    the forward in one kernel that turns B and C in registers (``kernels/mamba3_ssd_fwd.py``); without
    gradients it also applies the gate and needs no other launch (but B's and C's permutation), with them
    the backward recomputes k̃ and q (``_FusedScan``); "no_grad" (the default): that kernel where no gradient
    is needed, the rotation and SSD's kernels where one is. A dict instead of True: the fused kernel always,
    with these launch options (block_p, block_q, num_warps, num_stages; benchmarks).

    Differentiable in every tensor argument (the initial state included).
    """
    from ssm_edu.mamba3 import _carried_in, _gamma_scale, _heads, _start

    if not supported(x):
        raise ValueError(f"mamba3 through SSD takes SISO float32 or bfloat16 x (b, L, H, P); got {tuple(x.shape)} "
                         f"{x.dtype}")
    b, L, H, P = x.shape
    _form(rotate)  # an unknown form is refused on either path
    fused = FUSED_ROTATION if fused_rotation is None else fused_rotation
    if fused not in (True, False, "no_grad") and not isinstance(fused, dict):
        raise ValueError(f"fused_rotation must be True, False, \"no_grad\" or a dict of launch options; got {fused!r}")
    launch = fused if isinstance(fused, dict) else {}  # the fused kernel's launch options (benchmarks)
    state_tensors = initial_state if isinstance(initial_state, tuple) else (initial_state,)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, lam, theta, D, z, *state_tensors))
    if fused == "no_grad":  # the fused kernel only where it wins: without gradients (FUSED_ROTATION's comment)
        fused = not needs_grad
    dtf, lamf = dt.float(), lam.float()
    h0 = psi0 = None
    if isinstance(initial_state, torch.Tensor):
        h0 = initial_state.float()
    elif initial_state is not None:
        h_, psi0, kp, xp = (t.float() for t in _start(initial_state, x[:, :, :, None], B.shape[-1]))
        h0 = _carried_in(h_, xp, kp, dtf, lamf)  # the β-term of step 0, folded in
    if fused and not needs_grad:  # one launch (B's and C's permutation aside), the gate and D inside
        from .mamba3_ssd_fwd import fused_forward

        y, hT, psiT = fused_forward(x, dt, A, lam, theta, B, C, D, z, h0, _reduced(psi0), chunk_size,
                                    return_final_state, **launch)
        return _result(y, hT, psiT, x, B, return_final_state)
    Af = A.float()
    gamma, w = _gamma_scale(dtf, lamf)  # (b, L, H): γ_t and the weight below the diagonal
    dts = (-(dtf * Af)).clamp_min(TINY)  # Δ̃: SSD's decay exp(-Δ̃) is α
    # Δ̃ weighs the input only as Δ̃ r = w: its gradient is its part through the decays alone. SSD's
    # backward leaves the weight's part out (ddt_decay_only), and r sees a constant Δ̃; autograd through
    # r = w / Δ̃ would add that part and SSD's subtract it again, a cancellation that cost float32 dA
    # digits wherever |A| is small.
    qk = _heads((B.float() * C.float()).sum(-1, keepdim=True), H)[..., 0]  # q_tᵀ k_t = C_tᵀ B_t, (b, L, H)
    # the diagonal's correction, (γ - w) q_tᵀ k_t x_t, applied by _Scan in x's dtype (then the gate: one more pass)
    args = (B, C, theta, dtf, w / dts.detach(), psi0, x, dts, D, h0, (gamma - w) * qk)
    if fused:
        y, hT, psiT = _FusedScan.apply(chunk_size, bool(return_final_state), rotate, (dtf, Af, lamf), launch, *args)
    else:
        y, hT, psiT = _Scan.apply(chunk_size, bool(return_final_state), rotate, *args)
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(x.dtype))
    return _result(y, hT, psiT, x, B, return_final_state)


def _result(y, hT, psiT, x, B, return_final_state):
    """y, or y and the ``Mamba3State`` after the last step: its state and angle, and the β-term's key
    Rot(Φ_{L-1}) B_{L-1} and input x_{L-1} that the next step needs."""
    from ssm_edu.mamba3 import Mamba3State, _heads, rotate_pairs

    if not return_final_state:
        return y
    k_last = rotate_pairs(_heads(B[:, -1:].float(), x.shape[2])[:, 0], psiT)  # Rot(Φ_{L-1}) B_{L-1}
    return y, Mamba3State(hT, psiT, k_last, x[:, -1].to(torch.float32, copy=True))
