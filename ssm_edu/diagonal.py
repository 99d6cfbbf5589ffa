"""Diagonal state spaces: S4D, DSS and S5 (chapter 6).

Symbols -> code:  Λ (the diagonal of A) -> A (or Lambda),  B, C -> B, C,
Δ -> dt,  Ā = e^{ΔΛ} (ZOH) -> Ab,  B̄ -> Bb,  K -> K,  S5's B̃, C̃ -> B, C.
Shapes: H channels, N complex modes per channel (half of the real state size:
the other half are the complex conjugates and are never stored), L length,
b batch, P S5's state size (its P/2 modes are stored, the conjugates are not).

A real diagonal-complex SSM keeps its modes in conjugate pairs, so its kernel
is a sum over half the modes (the Vandermonde kernel of S4D):

    K_l = 2 Re Σ_n C_n B̄_n Ā_n^l,     Ā_n = e^{ΔΛ_n},  B̄_n = (e^{ΔΛ_n} - 1)/Λ_n · B_n   (ZOH)

``s4d_kernel`` computes it naively (a loop over l) and as one Vandermonde
product; ``s4d_init`` gives the four S4D initialisations of Λ; ``S4D`` and
``S5`` are layers (nn.Module): S4D convolves each channel with its own kernel,
S5 runs one multi-input, multi-output state through ``linear_scan``.

Bad input (a wrong rank, mismatched sizes, tensors on different devices, an
unsupported dtype, L < 1) raises ValueError or TypeError, naming the
argument, before any work; Δ must be finite and > 0 (ValueError). NaN and inf
in A, B or C are not checked for (the check would cost a GPU synchronisation
per call): they propagate into the kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._dispatch import dispatch
from ._validate import Shapes, check_dtype, check_length, check_positive, check_same_device
from .convolution import causal_conv
from .discretize import discretize_diag, init_log_dt
from .hippo import hippo
from .scan import linear_scan

__all__ = [
    "S4D_INITS",
    "s4d_init",
    "legs_diagonal",
    "s4d_kernel",
    "s4d_kernel_naive",
    "s4d_kernel_vectorized",
    "S4D",
    "S5",
    "SequenceClassifier",
    "digit_sequences",
    "fit_classifier",
]

S4D_INITS = ("legs", "lin", "inv", "real")
_COMPLEX = (torch.complex64, torch.complex128)
_REAL = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------
# Initialisations
# ----------------------------------------------------------------------------


def legs_diagonal(N: int) -> torch.Tensor:
    """S4D-LegS: the N/2 eigenvalues of LegS's normal part with negative imaginary part.

    HiPPO-LegS is normal plus low rank: A = S - P Pᵀ with P_n = √(n + ½).
    S = A + P Pᵀ is -½ I plus a skew-symmetric matrix, so its eigenvalues are
    -½ + iω with real ω in conjugate pairs; -i (S + ½ I) is Hermitian and
    ``eigh`` finds the ω. Returns complex128 (N/2,), real parts all -½.
    """
    A, _ = hippo(N, "legs")  # (N, N) float64
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)  # (N,)
    S = A + torch.outer(P, P)  # (N, N): -½ on the diagonal, skew elsewhere
    re = torch.diagonal(S).mean()  # -½
    omega = torch.linalg.eigvalsh(-1j * (S - re * torch.eye(N, dtype=torch.float64)))  # (N,) real, ascending
    lam = re + 1j * omega  # eigenvalues of S
    return lam[lam.imag < 0][: N // 2]  # (N/2,) one of each conjugate pair


def s4d_init(N: int, init: str = "legs") -> torch.Tensor:
    """The S4D initialisations of the diagonal Λ (N/2 stored modes of a state of size N).

    With n = 0 .. N/2 - 1 (Gu et al., 2022, "On the parameterization ..."):

        "legs"  the diagonal of LegS's normal part (``legs_diagonal``)
        "lin"   Λ_n = -½ + iπn            (S4D-Lin: frequencies in a line)
        "inv"   Λ_n = -½ + i(N/π)(N/(2n+1) - 1)   (S4D-Inv: like LegS's spread)
        "real"  Λ_n = -(n + 1)            (S4D-Real: no oscillation)

    Returns complex128 (N/2,). The S4 code stores the conjugates of some of
    these; under 2 Re that changes nothing.
    """
    if isinstance(N, bool) or not isinstance(N, int) or N < 2 or N % 2:
        raise ValueError(f"s4d_init: N must be an even int >= 2 (the real state size); got {N!r}")
    n = torch.arange(N // 2, dtype=torch.float64)
    if init == "legs":
        return legs_diagonal(N)
    if init == "lin":
        return torch.complex(torch.full_like(n, -0.5), math.pi * n)
    if init == "inv":
        return torch.complex(torch.full_like(n, -0.5), N / math.pi * (N / (2 * n + 1) - 1))
    if init == "real":
        return torch.complex(-(n + 1), torch.zeros_like(n))
    raise ValueError(f"s4d_init: unknown init={init!r}; valid: {', '.join(map(repr, S4D_INITS))}")


# ----------------------------------------------------------------------------
# The Vandermonde kernel
# ----------------------------------------------------------------------------


def s4d_kernel_naive(A, B, C, dt, L, method="zoh"):
    """The specification: K_l = 2 Re Σ_n C_n B̄_n Ā_n^l, one l per iteration.

    A, B, C (H, N) complex, dt (H,) -> K (H, L) real. The powers Ā^l B̄ are
    kept as a running product (L sequential steps of O(H N) work).
    """
    Ab, Bb = discretize_diag(A, B, dt[:, None], method=method, impl="naive")  # (H, N) each
    x = Bb  # (H, N) = Ā^0 B̄
    K = []
    for _ in range(L):
        K.append(2 * (C * x).sum(-1).real)  # (H,)
        x = Ab * x  # Ā^{l+1} B̄
    return torch.stack(K, dim=-1)  # (H, L)


def s4d_kernel_vectorized(A, B, C, dt, L, method="zoh"):
    """All l at once: the Vandermonde matrix V[h, n, l] = Ā_{h,n}^l times the vector C B̄.

    Ā^l = exp(l log Ā); for ZOH log Ā = ΔΛ exactly (S4D's "log-Vandermonde").
    Materialises V (H, N, L): O(H N L) work and memory, no sequential steps.
    """
    Ab, Bb = discretize_diag(A, B, dt[:, None], method=method)  # (H, N) each
    log_Ab = dt[:, None] * A if method == "zoh" else torch.log(Ab)  # (H, N)
    l = torch.arange(L, device=A.device, dtype=dt.dtype)  # (L,)
    V = torch.exp(log_Ab[..., None] * l)  # (H, N, L) Vandermonde
    return 2 * torch.einsum("hn,hnl->hl", C * Bb, V).real  # (H, L)


def s4d_kernel(A, B, C, dt, L, method="zoh", impl="auto"):
    """Convolution kernel of a diagonal SSM stored as conjugate-pair halves (API.md).

    Args:
        A: (H, N) complex diagonal Λ (N stored modes; their conjugates are implied).
        B, C: (H, N) complex input and output vectors.
        dt: (H,) positive real steps Δ, one per channel.
        L: kernel length, an int >= 1.
        method: ``"zoh"`` or ``"bilinear"``.
        impl: ``"naive"`` (loop over l), ``"vectorized"`` (Vandermonde
            product) or ``"auto"`` (= vectorized).
    Returns:
        K (H, L) real, K[h, l] = 2 Re Σ_n C[h,n] B̄[h,n] Ā[h,n]^l, float32
        for complex64 inputs and float64 for complex128.
    """
    op = "s4d_kernel"
    fn = dispatch(op, impl, (A, B, C, dt), naive=s4d_kernel_naive, vectorized=s4d_kernel_vectorized)
    if method not in ("zoh", "bilinear"):
        raise ValueError(f"{op}: unknown method={method!r}; valid: 'zoh', 'bilinear'")
    shapes = Shapes(op)
    shapes.check("A", A, "H N")
    shapes.check("B", B, "H N")
    shapes.check("C", C, "H N")
    shapes.check("dt", dt, "H")
    check_same_device(op, A=A, B=B, C=C, dt=dt)
    for name, x in (("A", A), ("B", B), ("C", C)):
        check_dtype(op, name, x, _COMPLEX + _REAL)
    check_dtype(op, "dt", dt, _REAL)
    check_positive(op, "dt", dt)
    check_length(op, L)
    double = any(x.dtype in (torch.float64, torch.complex128) for x in (A, B, C, dt))
    cdt, rdt = (torch.complex128, torch.float64) if double else (torch.complex64, torch.float32)
    return fn(A.to(cdt), B.to(cdt), C.to(cdt), dt.to(rdt), L, method)


# ----------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------


class S4D(nn.Module):
    """An S4D layer: one diagonal SSM per channel, applied as a convolution.

    u (b, H, L) -> y (b, H, L). Per channel h: K = s4d_kernel(Λ_h, 1, C_h, Δ_h),
    y = K * u + D u (FFT convolution), then GELU and a position-wise
    Conv1d(H -> 2H) + GLU mixing the channels (as in the S4 repository's
    ``s4d.py``). Parameters: Λ = -exp(log_A_real) + i A_imag (real part kept
    negative), C (H, N/2) complex ~ CN(0, 1), log Δ uniform in
    [log dt_min, log dt_max], D ~ N(0, 1). B = 1 (absorbed into C).
    """

    def __init__(self, H: int, N: int = 64, init: str = "legs", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 method: str = "zoh"):
        super().__init__()
        if isinstance(H, bool) or not isinstance(H, int) or H < 1:
            raise ValueError(f"S4D: H must be an int >= 1; got {H!r}")
        if method not in ("zoh", "bilinear"):
            raise ValueError(f"S4D: unknown method={method!r}; valid: 'zoh', 'bilinear'")
        lam = s4d_init(N, init).to(torch.complex64).expand(H, N // 2)  # (H, N/2)
        self.method = method
        self.log_A_real = nn.Parameter(torch.log(-lam.real).clone())
        self.A_imag = nn.Parameter(lam.imag.clone())
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N // 2, dtype=torch.complex64)))  # (H, N/2, 2)
        self.log_dt = nn.Parameter(init_log_dt(H, dt_min, dt_max))
        self.D = nn.Parameter(torch.randn(H))
        self.mix = nn.Conv1d(H, 2 * H, kernel_size=1)

    def A(self) -> torch.Tensor:
        return torch.complex(-torch.exp(self.log_A_real), self.A_imag)  # (H, N/2)

    def kernel(self, L: int) -> torch.Tensor:
        A = self.A()
        C = torch.view_as_complex(self.C)
        return s4d_kernel(A, torch.ones_like(A), C, torch.exp(self.log_dt), L, method=self.method)  # (H, L)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        shapes = Shapes("S4D")
        shapes.sizes["H"] = self.D.shape[0]
        shapes.check("u", u, "b H L")
        y = causal_conv(u, self.kernel(u.shape[-1]), impl="vectorized") + self.D[:, None] * u  # (b, H, L)
        return F.glu(self.mix(F.gelu(y)), dim=1)  # (b, H, L)


class S5(nn.Module):
    """An S5 layer: one multi-input, multi-output diagonal SSM shared by all channels.

    u (b, H, L) -> y (b, H, L). State x_k ∈ C^{P/2} (the stored half of P
    modes in conjugate pairs):

        x_k = Ā ⊙ x_{k-1} + B̄ u_k,     y_k = 2 Re(C̃ x_k) + D ⊙ u_k,

    with Ā = e^{ΔΛ}, B̄ = diag((Ā - 1)/Λ) B̃ (ZOH, one Δ per mode). The
    recurrence runs as a parallel scan (``linear_scan``) over L, not as a
    convolution: one state mixes all H channels, and nothing of size
    (H, H, L) is ever built. Then GELU, as in S5's default block.

    Initialisation: Λ from LegS's normal part (``legs_diagonal(P)``, S5's
    HiPPO-N with one block); B̃ (P/2, H) and C̃ (H, P/2) complex Gaussians of
    variance 1/H and 1/P (S5 draws real matrices and rotates them into the
    eigenbasis with V⁻¹ and V; a unitary V keeps their scale), D ~ N(0, 1),
    log Δ uniform in [log dt_min, log dt_max].
    """

    def __init__(self, H: int, P: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1, scan_impl: str = "auto"):
        super().__init__()
        if isinstance(H, bool) or not isinstance(H, int) or H < 1:
            raise ValueError(f"S5: H must be an int >= 1; got {H!r}")
        if isinstance(P, bool) or not isinstance(P, int) or P < 2 or P % 2:
            raise ValueError(f"S5: P must be an even int >= 2 (the state size; P/2 modes are stored); got {P!r}")
        lam = legs_diagonal(P).to(torch.complex64)  # (P/2,)
        self.scan_impl = scan_impl
        self.log_A_real = nn.Parameter(torch.log(-lam.real).clone())
        self.A_imag = nn.Parameter(lam.imag.clone())
        self.B = nn.Parameter(torch.view_as_real(torch.randn(P // 2, H, dtype=torch.complex64) / math.sqrt(H)))
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, P // 2, dtype=torch.complex64) / math.sqrt(P)))
        self.D = nn.Parameter(torch.randn(H))
        self.log_dt = nn.Parameter(init_log_dt(P // 2, dt_min, dt_max))

    def A(self) -> torch.Tensor:
        return torch.complex(-torch.exp(self.log_A_real), self.A_imag)  # (P/2,)

    def ssm(self, u: torch.Tensor) -> torch.Tensor:
        """The linear system alone: u (b, H, L) -> 2 Re(C̃ x) + D u, (b, H, L)."""
        shapes = Shapes("S5")
        shapes.sizes["H"] = self.D.shape[0]
        shapes.check("u", u, "b H L")
        lam = self.A()
        Ab, Bs = discretize_diag(lam, torch.ones_like(lam), torch.exp(self.log_dt))  # (P/2,) each
        Bb = Bs[:, None] * torch.view_as_complex(self.B)  # (P/2, H)
        Bu = torch.einsum("ph,bhl->bpl", Bb, u.to(Bb.dtype))  # (b, P/2, L)
        x = linear_scan(Ab[None, :, None].expand_as(Bu), Bu, impl=self.scan_impl)  # (b, P/2, L)
        y = 2 * torch.einsum("hp,bpl->bhl", torch.view_as_complex(self.C), x).real  # (b, H, L)
        return y + self.D[:, None] * u

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.ssm(u))


class SequenceClassifier(nn.Module):
    """A small sequence classifier: encoder, ``depth`` residual SSM blocks, mean pool, decoder.

    x (b, L) or (b, d_in, L) -> logits (b, n_classes). Each block is
    u + layer(LayerNorm(u)) (pre-norm residual). ``layer`` is a factory
    ``layer(H) -> nn.Module`` mapping (b, H, L) to (b, H, L).
    """

    def __init__(self, layer, H: int, depth: int, n_classes: int, d_in: int = 1):
        super().__init__()
        self.encoder = nn.Conv1d(d_in, H, kernel_size=1)
        self.layers = nn.ModuleList([layer(H) for _ in range(depth)])
        self.norms = nn.ModuleList([nn.LayerNorm(H) for _ in range(depth)])
        self.decoder = nn.Linear(H, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.encoder(x[:, None] if x.dim() == 2 else x)  # (b, H, L)
        for layer, norm in zip(self.layers, self.norms):
            u = u + layer(norm(u.mT).mT)
        return self.decoder(u.mean(-1))  # (b, n_classes)


# ----------------------------------------------------------------------------
# A tiny task: sequential digits (chapter 5's task)
# ----------------------------------------------------------------------------


def digit_sequences(seed: int = 0, test_fraction: float = 0.25):
    """scikit-learn's 8 x 8 digits read pixel by pixel: sequences of length 64.

    Returns (X_train, y_train, X_test, y_test): X float32 (n, 64) in [0, 1]
    (row-major pixel order), y int64 (n,) in 0..9. 1797 images in all.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    X = torch.tensor(data.data, dtype=torch.float32) / 16.0  # (1797, 64)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return X[train], y[train], X[test], y[test]


def fit_classifier(model, data, epochs: int = 3, lr: float = 3e-3, batch_size: int = 64, seed: int = 0):
    """Train ``model`` (x (b, L) -> logits) with AdamW and cross-entropy; return the history.

    data = (X_train, y_train, X_test, y_test). Returns a dict with the
    training loss per step ("loss") and the test accuracy after each epoch
    ("test_acc").
    """
    X, y, Xt, yt = data
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    hist = {"loss": [], "test_acc": []}
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            hist["loss"].append(loss.item())
        model.eval()
        with torch.no_grad():
            hist["test_acc"].append((model(Xt).argmax(-1) == yt).float().mean().item())
    return hist
