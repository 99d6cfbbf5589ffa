"""A first Triton kernel for Mamba-3 (chapter 9): the recurrence, one token per step.

    Φ_t = Φ_{t-1} + θ_t Δ_t,   k_t = Rot(Φ_t) B_t,   q_t = Rot(Φ_t) C_t
    h_t = α_t h_{t-1} + β_t x_{t-1} k_{t-1}ᵀ + γ_t x_t k_tᵀ,   y_t = h_t q_t

SISO, float32, no D, no gate, no state in or out: the smallest correct kernel,
written to be read beside ``ssm_edu.mamba3.mamba3_naive``. One program per
(batch, head, block of BLOCK_P rows of the state). The state (BLOCK_P, N),
kept as its even and odd columns (each pair is one rotating plane), stays in
registers while the program walks the L tokens in order. Each step is a few
elementwise operations on that tile: correct, and slow (L dependent steps, no
matrix units). ``kernels/mamba3.py`` does the same work a chunk at a time.
"""

import torch
import triton
import triton.language as tl

__all__ = ["mamba3_first"]

BLOCK_P = 16


@triton.jit
def _mamba3_first(x_ptr, dt_ptr, A_ptr, lam_ptr, theta_ptr, B_ptr, C_ptr, y_ptr,
                  L, H, HPG, G, P, N2,
                  BLOCK_P: tl.constexpr, BLOCK_N2: tl.constexpr):
    # x, y (b, L, H, P); dt, A, lam (b, L, H); theta (b, L, H, N2);
    # B, C (b, L, G, 2 N2); everything float32
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    g = h // HPG  # the group of B and C this head reads
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N2)  # pair i: entries 2i and 2i + 1
    p_ok, n_ok = p < P, n < N2
    h_e = tl.zeros([BLOCK_P, BLOCK_N2], dtype=tl.float32)  # h[p, 2i]
    h_o = tl.zeros([BLOCK_P, BLOCK_N2], dtype=tl.float32)  # h[p, 2i + 1]
    phi = tl.zeros([BLOCK_N2], dtype=tl.float32)  # Φ_{t-1}
    k_e = tl.zeros([BLOCK_N2], dtype=tl.float32)  # k_{t-1}
    k_o = tl.zeros([BLOCK_N2], dtype=tl.float32)
    x_prev = tl.zeros([BLOCK_P], dtype=tl.float32)  # x_{t-1}
    for t in range(L):
        row = (b * L + t) * H + h  # (batch, step, head)
        dt = tl.load(dt_ptr + row)
        alpha = tl.exp(dt * tl.load(A_ptr + row))
        lam = tl.load(lam_ptr + row)
        beta, gamma = (1 - lam) * dt * alpha, lam * dt
        th = tl.load(theta_ptr + row * N2 + n, mask=n_ok, other=0.0)
        phi += th * dt  # Φ_t
        cos, sin = tl.cos(phi), tl.sin(phi)
        # the previous token's term, with the k_{t-1} it was given
        h_e = alpha * h_e + beta * x_prev[:, None] * k_e[None, :]
        h_o = alpha * h_o + beta * x_prev[:, None] * k_o[None, :]
        bc = ((b * L + t) * G + g) * (2 * N2) + 2 * n  # B_t[2i], C_t[2i]
        u = tl.load(B_ptr + bc, mask=n_ok, other=0.0)
        v = tl.load(B_ptr + bc + 1, mask=n_ok, other=0.0)
        k_e, k_o = u * cos - v * sin, u * sin + v * cos  # k_t = Rot(Φ_t) B_t
        x_t = tl.load(x_ptr + row * P + p, mask=p_ok, other=0.0)
        h_e += gamma * x_t[:, None] * k_e[None, :]
        h_o += gamma * x_t[:, None] * k_o[None, :]
        u = tl.load(C_ptr + bc, mask=n_ok, other=0.0)
        v = tl.load(C_ptr + bc + 1, mask=n_ok, other=0.0)
        q_e, q_o = u * cos - v * sin, u * sin + v * cos  # q_t = Rot(Φ_t) C_t
        y = tl.sum(h_e * q_e[None, :] + h_o * q_o[None, :], axis=1)  # h_t q_t
        tl.store(y_ptr + row * P + p, y, mask=p_ok)
        x_prev = x_t


def mamba3_first(x, dt, A, B, C, lam, theta):
    """Run the first kernel: SISO shapes of ``ssm_edu.mamba3`` (x (b, L, H, P),
    B, C (b, L, G, N), ...), computed in float32; returns y like x (float32).
    No D, gate or states: ``mamba3_triton`` has those."""
    b, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    ts = (x, dt, A, lam, theta, B, C)
    x, dt, A, lam, theta, B, C = (t.float().contiguous() for t in ts)
    y = torch.empty_like(x)
    grid = (triton.cdiv(P, BLOCK_P), b * H)
    block_n2 = max(2, triton.next_power_of_2(N // 2))
    _mamba3_first[grid](x, dt, A, lam, theta, B, C, y, L, H, H // G, G, P, N // 2,
                        BLOCK_P=BLOCK_P, BLOCK_N2=block_n2)
    return y
