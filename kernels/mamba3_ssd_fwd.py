"""Mamba-3 (SISO) through SSD with the rotation inside the chunk walk: k and q never touch memory.

The same function as ``kernels/mamba3_ssd.py`` (the trapezoid as SSD with decays a_t = Δ_t A_t, an input
weight w_s below the diagonal and γ_t on it; see that module's docstring), computed by one kernel in place
of four launches and a dozen small PyTorch operations. That path materialises k̃ = r Rot(Φ) B and
q = Rot(Φ) C for every head (b, L, H, N) although B and C are per group; here each program turns the
group's B and C in registers, chunk by chunk, as it walks.

Work split. One program per (batch, head, block of BLOCK_P of the P head dims) walks the chunks of Q
steps in order, carrying the state S = hᵀ (N, BLOCK_P) in float32 registers and the angle Ψ entering the
chunk (N/2,), reduced mod 2π after every chunk (as ``_rotate_fwd``'s walk). Per chunk:

* Δ, A, λ (Q,) and Δ, λ one step later (the weight w_s = γ_s + (1 - λ_{s+1}) Δ_{s+1}, γ_s = λ_s Δ_s;
  the second term is 0 at s = L - 1); log2 decays a⁺ = cumsum(Δ A log2 e) inside the chunk;
* θ (Q, N/2): Φ = Ψ + cumsum(θ Δ) down the chunk (``tl.cumsum``), then cos Φ, sin Φ;
* B, C (Q, N) of the head's group, in the permuted basis [even entries | odd entries] (the launcher
  permutes them once, b L G N elements), so that pair (2i, 2i + 1) is (i, i + N/2) and the turn acts on
  two contiguous halves: k_e = B_e cos - B_o sin, k_o = B_e sin + B_o cos, likewise q from C;
* the chunk's products, every N-contraction the sum of two half-products over N/2:
      Y = (Q Kᵀ ∘ M) X + exp2(a⁺_t) (Q_e S_e + Q_o S_o),
      M[t, s] = exp2(a⁺_t - a⁺_s) w_s for s < t, γ_t for s = t (the trapezoid's mask, whose diagonal the
      other path gets as SSD's w_t plus a correction (γ_t - w_t) C_tᵀ B_t x_t in a second pass over y),
      S_e <- exp2(a⁺_Q) S_e + (exp2(a⁺_Q - a⁺_s) w_s K_e)ᵀ X, and S_o likewise;
* Y + D x, then ⊙ SiLU(z), stored in x's dtype.

The state lives in the permuted basis in registers; the initial state is read and the final state
written in the natural one (entries 2i and 2i + 1 of each row, once per program). y does not depend on
the basis.

Traffic at B4 L4096 H32 P64 N128 G1, bf16 x, B, C, z, float32 Δ, A, λ, θ (forward, one launch; the
default launch has one program per (batch, head), so each head's θ is read once): x 67 MB, θ 134 MB, Δ, A,
λ 6 MB, y 67 MB, z 67 MB when gated, B and C 8 MB (read by every head of the group, from L2 after the
first) plus their permutation (17 MB): about 300 MB without z, 370 MB with it, against about 1.0 GB for the
path through the materialised k̃ and q. Floor at 4.3 TB/s (an H200): 70 us, 85 us with z. Work per chunk
of Q = 32 and head: 2 (Q N Q + Q Q P + 2 Q N P) = 1.4 MFLOP on tensor cores (23.6 GFLOP in all, the
path's SSD products plus the Q Kᵀ that ``_ssd_cb`` computed per group: about 30 us at 800 TFLOP/s), and
the cosine and sine of b L H N/2 = 33.5M angles (libdevice, about 40 instructions each: about 80 us of
issue, inside a walk of 128 dependent chunks per program; the approximate units with bfloat16). Prediction: 250-400 us for the kernel, plus
the permutation's two small copies, against 902 us for the present path (H200) and 669 us for
``mamba_ssm``'s ``mamba3_siso_combined`` with D and z.

Compiled for sm_90 (Triton 3.7.1, ``python benchmarks/compile_mamba3.py "fused rot"``, at that shape):
chunks of 32, P block 64, 8 warps, 2 stages, fast trig (the default): 214 registers, no spill, 54.9 KB
shared, 128 programs (one wave, one block an SM); with the gate 216; with libdevice's trig 218. Chunks of
32, P blocks of 32, 4 warps: 255 registers, no spill, two blocks an SM (256 programs, one wave). Chunks of
64 with P blocks of 32: no spill at 8 warps (one block an SM, so 256 programs take two waves), 52/56 bytes
of spill at 4 warps; chunks of 64 with all of P at 8 warps 20/20. float32 (tests, IEEE products) spills
1.8 KB.

Training. The backward (SSD's and the rotation's, ``kernels/mamba3_ssd.py``) needs k̃ and q. They are
recomputed there by the rotation kernel (``_rotate_forward``, one pass: reads θ twice, writes k̃ and q,
about 550 MB), not saved by this forward: saving them would write the same 268 MB here that the
rotation writes there, and keep them alive between the passes, and the fused forward would then be the
rotation kernel plus a walk. Recomputed, the rotation runs once per training step as before (moved from
the forward to the backward), and the forward saves the reads of k̃ and q by SSD's kernels, the
correction's pass over y and the separate C Bᵀ launch.

Not covered: MIMO and float16 (as the other path), and segments of L for long sequences with few
(batch, head) pairs (SSD's ``_ssd_seg_fix``): one program walks the whole of L.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2, num_sms
from .mamba3 import _trig

__all__ = ["fused_forward", "permute_pairs"]

TWO_PI = tl.constexpr(6.283185307179586)


@triton.jit
def _turned(ptr, rows, t_ok, i, i_ok, N2, cs, sn):
    """The rows' entries (Q, N) in the permuted basis [even | odd], turned by Φ: (e cos - o sin, e sin + o cos),
    float32 (Q, BLOCK_I) each."""
    m = t_ok[:, None] & i_ok[None, :]
    e = tl.load(ptr + rows[:, None] + i[None, :], mask=m, other=0.0).to(tl.float32)
    o = tl.load(ptr + rows[:, None] + N2 + i[None, :], mask=m, other=0.0).to(tl.float32)
    return e * cs - o * sn, e * sn + o * cs


@triton.jit
def _m3_ssd_fwd(
    x_ptr, dt_ptr, A_ptr, lam_ptr, theta_ptr, B_ptr, C_ptr, D_ptr, z_ptr, h0_ptr, psi0_ptr,
    y_ptr, hT_ptr, psiT_ptr,
    L, H, G, P, N2, n_chunks,
    HAS_D: tl.constexpr, D_PER_DIM: tl.constexpr, HAS_Z: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_PSI0: tl.constexpr, STORE_STATE: tl.constexpr, IEEE: tl.constexpr, FAST: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_I: tl.constexpr,
):
    pid = tl.program_id(0)  # batch * H + head
    bi, h = pid // H, pid % H
    g = h // (H // G)
    N = 2 * N2
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    i = tl.arange(0, BLOCK_I)  # angle pairs
    q = tl.arange(0, BLOCK_Q)
    p_ok, i_ok = p < P, i < N2
    dot_t = x_ptr.dtype.element_ty

    if HAS_D:
        if D_PER_DIM:
            Dh = tl.load(D_ptr + h * P + p, mask=p_ok, other=0.0).to(tl.float32)[None, :]
        else:
            Dh = tl.load(D_ptr + h).to(tl.float32)
    # hᵀ's even and odd rows (BLOCK_I, BLOCK_P): entries 2i and 2i + 1 of h (b, H, P, N)
    st_e = (pid.to(tl.int64) * P + p[None, :]) * N + 2 * i[:, None]
    st_mask = i_ok[:, None] & p_ok[None, :]
    if HAS_H0:
        Se = tl.load(h0_ptr + st_e, mask=st_mask, other=0.0).to(tl.float32)
        So = tl.load(h0_ptr + st_e + 1, mask=st_mask, other=0.0).to(tl.float32)
    else:
        Se = tl.zeros([BLOCK_I, BLOCK_P], dtype=tl.float32)
        So = tl.zeros([BLOCK_I, BLOCK_P], dtype=tl.float32)
    if HAS_PSI0:
        psi = tl.load(psi0_ptr + pid * N2 + i, mask=i_ok, other=0.0).to(tl.float32)
    else:
        psi = tl.zeros([BLOCK_I], dtype=tl.float32)
    causal = q[:, None] > q[None, :]
    diag = q[:, None] == q[None, :]
    last = q == BLOCK_Q - 1

    for c in range(0, n_chunks):
        t = c * BLOCK_Q + q
        t_ok, t1_ok = t < L, t + 1 < L
        row = (bi * L + t).to(tl.int64)
        dt = tl.load(dt_ptr + row * H + h, mask=t_ok, other=0.0).to(tl.float32)  # (Q,), 0 past L
        lam = tl.load(lam_ptr + row * H + h, mask=t_ok, other=0.0).to(tl.float32)
        a2 = tl.load(A_ptr + row * H + h, mask=t_ok, other=0.0).to(tl.float32) * dt * 1.4426950408889634
        dt1 = tl.load(dt_ptr + (row + 1) * H + h, mask=t1_ok, other=0.0).to(tl.float32)
        lam1 = tl.load(lam_ptr + (row + 1) * H + h, mask=t1_ok, other=1.0).to(tl.float32)
        gamma = lam * dt
        w = gamma + (1.0 - lam1) * dt1  # the input's weight below the diagonal
        a_cum = tl.cumsum(a2, axis=0)
        a_end = tl.sum(tl.where(last, a_cum, 0.0), axis=0)

        # the angles Φ (Q, BLOCK_I) from the angle entering the chunk
        th = tl.load(theta_ptr + (row * H + h)[:, None] * N2 + i[None, :], mask=t_ok[:, None] & i_ok[None, :],
                     other=0.0).to(tl.float32)
        inc = th * dt[:, None]
        phi = psi[None, :] + tl.cumsum(inc, axis=0)
        psi = psi + tl.sum(inc, axis=0)
        psi = psi - TWO_PI * tl.floor(psi * 0.15915494309189535)  # in [0, 2π): float32 keeps its digits
        cs, sn = _trig(phi, FAST)  # FAST: the approximate units after reduction to [-π, π) (kernels/mamba3.py)
        bc = (row * G + g) * N  # (Q,) the group's rows of B and C (permuted basis)
        ke, ko = _turned(B_ptr, bc, t_ok, i, i_ok, N2, cs, sn)
        qe, qo = _turned(C_ptr, bc, t_ok, i, i_ok, N2, cs, sn)
        # operands in x's dtype at once (fewer registers live; the products round them so anyway)
        ke, ko, qe, qo = ke.to(dot_t), ko.to(dot_t), qe.to(dot_t), qo.to(dot_t)

        x_offs = (row[:, None] * H + h) * P + p[None, :]
        mask_x = t_ok[:, None] & p_ok[None, :]
        x = tl.load(x_ptr + x_offs, mask=mask_x, other=0.0)  # (Q, BLOCK_P)
        # the trapezoid's mask: exp2(a⁺_t - a⁺_s) w_s below the diagonal, γ_t on it
        decay = tl.exp2(tl.where(causal, a_cum[:, None] - a_cum[None, :], float("-inf")))
        m = tl.where(diag, gamma[:, None], decay * w[None, :])
        # step s's weight in the chunk's last state, on x's rows (Q, BLOCK_P) rather than the keys' (Q, N)
        xw = (x.to(tl.float32) * (tl.exp2(a_end - a_cum) * w)[:, None]).to(dot_t)
        if IEEE:
            qk = tl.dot(qe, tl.trans(ke), input_precision="ieee")
            qk = tl.dot(qo, tl.trans(ko), qk, input_precision="ieee")
            y = tl.dot(qk * m, x, input_precision="ieee")
            ys = tl.dot(qe, Se, input_precision="ieee")
            ys = tl.dot(qo, So, ys, input_precision="ieee")
            Se = Se * tl.exp2(a_end) + tl.dot(tl.trans(ke), xw, input_precision="ieee")
            So = So * tl.exp2(a_end) + tl.dot(tl.trans(ko), xw, input_precision="ieee")
        else:
            qk = tl.dot(qe, tl.trans(ke))
            qk = tl.dot(qo, tl.trans(ko), qk)
            y = tl.dot((qk * m).to(dot_t), x)
            ys = tl.dot(qe, Se.to(dot_t))
            ys = tl.dot(qo, So.to(dot_t), ys)
            Se = Se * tl.exp2(a_end) + tl.dot(tl.trans(ke), xw)
            So = So * tl.exp2(a_end) + tl.dot(tl.trans(ko), xw)
        y += ys * tl.exp2(a_cum)[:, None]  # the state entering the chunk, decayed to t

        if HAS_D:
            y += x.to(tl.float32) * Dh
        if HAS_Z:
            zz = tl.load(z_ptr + x_offs, mask=mask_x, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + x_offs, y.to(y_ptr.dtype.element_ty), mask=mask_x)

    if STORE_STATE:
        tl.store(hT_ptr + st_e, Se, mask=st_mask)
        tl.store(hT_ptr + st_e + 1, So, mask=st_mask)
        tl.store(psiT_ptr + pid * N2 + i, psi, mask=i_ok & (tl.program_id(1) == 0))


def permute_pairs(v):
    """(..., N) -> (..., N) with the even entries first, then the odd ones: pair (2i, 2i + 1) -> (i, i + N/2)."""
    return v.unflatten(-1, (v.shape[-1] // 2, 2)).transpose(-1, -2).flatten(-2)


def launch_config(x, N, chunk_size=64, block_p=None, block_q=None, num_warps=None, num_stages=None,
                  fast_trig=None):
    """Block sizes and launch options: (meta constexprs, extra launch options).

    On a GPU: chunks of 32 steps, all of P (up to 64) in one program, 8 warps. Compiled for sm_90 at B4
    L4096 H32 P64 N128 bf16 (benchmarks/compile_mamba3.py, "fused rot"), that is 218 registers and no
    spill, 128 programs: one wave on an H100 or H200, and each head's angles and turned B, C computed once.
    Chunks of 64 with P blocks of 32 spill 248 bytes at 4 warps (two blocks an SM) and none at 8 warps (one
    block an SM: 256 programs, two waves); the sweep times those too. ``fast_trig``: cos.approx and
    sin.approx after reducing Φ to [-π, π) (absolute error about 1e-6, far below bfloat16's rounding), the
    default for bfloat16; libdevice's cos and sin (about 40 instructions each) for float32 and in the
    interpreter."""
    b, L, H, P = x.shape
    BLOCK_I = max(16, next_pow2(N // 2))
    if interpreting():
        Q = block_q or min(max(next_pow2(chunk_size), 16), 64)
        return dict(BLOCK_Q=Q, BLOCK_P=block_p or max(16, min(next_pow2(P), 32)), BLOCK_I=BLOCK_I, FAST=False), {}
    Q = block_q or min(max(next_pow2(chunk_size), 16), 32)
    if block_p is None:  # P blocks of 32 only when the (batch, head) pairs cannot fill half the GPU
        block_p = max(16, min(next_pow2(P), 64))
        if block_p == 64 and 2 * b * H < num_sms(x.device):
            block_p = 32
    fast = x.dtype != torch.float32 if fast_trig is None else bool(fast_trig)
    return (dict(BLOCK_Q=Q, BLOCK_P=block_p, BLOCK_I=BLOCK_I, FAST=fast),
            dict(num_warps=num_warps or 8, num_stages=num_stages or 2))


def fused_forward(x, dt, A, lam, theta, B, C, D=None, z=None, h0=None, psi0=None, chunk_size=64,
                  return_final_state=False, **knobs):
    """Launch ``_m3_ssd_fwd``. x (b, L, H, P) float32 or bfloat16; dt, A, lam (b, L, H); theta (b, L, H, N/2);
    B, C (b, L, G, N); D (H,) or (H, P); z like x; h0 (b, H, P, N) (the β-term of step 0 already folded in),
    psi0 (b, H, N/2) the angle Φ_{-1}. Returns y (x's dtype), and the final state h (b, H, P, N) and angle
    Φ_{L-1} mod 2π (b, H, N/2), float32, or None. ``knobs``: block_p, block_q, num_warps, num_stages
    (benchmarks and tests)."""
    if interpreting() and x.dtype != torch.float32:  # the interpreter computes in float32 only
        f = lambda t: None if t is None else t.float()  # noqa: E731
        y, hT, psiT = fused_forward(f(x), dt, A, lam, theta, f(B), f(C), D, f(z), h0, psi0, chunk_size,
                                    return_final_state, **knobs)
        return y.to(x.dtype), hT, psiT
    b, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    if N % 2:
        raise ValueError(f"mamba3: N must be even (pairs of the rotation); got {N}")
    x = x.contiguous()
    dt, A, lam, theta = (t.float().contiguous() for t in (dt, A, lam, theta))
    Bp, Cp = permute_pairs(B.to(x.dtype)).contiguous(), permute_pairs(C.to(x.dtype)).contiguous()
    meta, extra = launch_config(x, N, chunk_size, **knobs)
    n_chunks = triton.cdiv(L, meta["BLOCK_Q"])
    y = torch.empty_like(x)
    f32 = dict(device=x.device, dtype=torch.float32)
    hT = torch.empty(b, H, P, N, **f32) if return_final_state else y
    psiT = torch.empty(b, H, N // 2, **f32) if return_final_state else y
    dummy = y
    _m3_ssd_fwd[(b * H, triton.cdiv(P, meta["BLOCK_P"]))](
        x, dt, A, lam, theta, Bp, Cp, dummy if D is None else D.float().contiguous(),
        dummy if z is None else z.to(x.dtype).contiguous(), dummy if h0 is None else h0.float().contiguous(),
        dummy if psi0 is None else psi0.float().contiguous(), y, hT, psiT,
        L, H, G, P, N // 2, n_chunks,
        HAS_D=D is not None, D_PER_DIM=D is not None and D.dim() == 2, HAS_Z=z is not None, HAS_H0=h0 is not None,
        HAS_PSI0=psi0 is not None, STORE_STATE=bool(return_final_state), IEEE=x.dtype == torch.float32,
        **meta, **extra)
    return (y, hT, psiT) if return_final_state else (y, None, None)
