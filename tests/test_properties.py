"""Property-based tests (hypothesis) of every API operation of ssm_edu.

For random sizes (length 1, odd lengths, batch 1, several batch dims), random
dtypes and random memory layouts (contiguous, strided, transposed), every
implementation of an operation must agree with its naive version evaluated in
float64 on the same rounded inputs, within the dtype's tolerance (API.md);
a NaN in an input must come out as NaN without an exception (the documented
behaviour); and a wrong dtype, a tensor on another device or a mismatched
size must raise ValueError or TypeError naming the argument.

Adding an operation is one entry in OPS: a strategy for its sizes, a
function making well-conditioned float64 inputs, and how to call it.
Triton kernels run in the CPU interpreter here, at tiny sizes only.
Examples are derandomized, so a CI run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ssm_edu
from ssm_edu.numerics import rel_error, tolerance

F64, C128 = torch.float64, torch.complex128
COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: C128, torch.bfloat16: torch.complex64,
              torch.float16: torch.complex64}
LENGTHS = st.sampled_from([1, 2, 3, 5, 16, 17, 31, 64, 65])
TINY_LENGTHS = st.sampled_from([1, 2, 3, 7, 16, 17, 33])
BATCH = st.sampled_from([(), (1,), (3,), (2, 3)])

SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Op:
    """One API operation: how to draw its sizes, make inputs and call an implementation."""

    name: str
    sizes: st.SearchStrategy            # draws a dict of sizes and options
    make: Callable[[dict, torch.Generator], dict]  # float64 / complex128 inputs (tensors) and options
    call: Callable[[dict, str], object]  # inputs, impl -> output tensor or tuple
    impls: tuple[str, ...]               # compared with "naive"
    dtypes: tuple = (torch.float32, torch.float64)
    triton: tuple = ()                   # dtypes the Triton kernel takes ("triton" is tested apart)
    tiny: st.SearchStrategy | None = None  # sizes for the Triton interpreter
    poison: str | None = None            # the input a NaN goes into
    grow: dict = field(default_factory=dict)  # input -> dim whose size must match the others'
    tol: dict = field(default_factory=dict)   # dtype -> tolerance, where the API's is not reachable
    examples: int = 30


def _rand(gen, *shape, complex_=False):
    x = torch.randn(shape, generator=gen, dtype=F64)  # shape () gives a 0-dim tensor
    return torch.complex(x, torch.randn(shape, generator=gen, dtype=F64)) if complex_ else x


def _stable_matrix(gen, batch, N, complex_=False):
    """A random A whose eigenvalues have real part <= -0.5: exp(ΔA) and (I - ΔA/2) behave."""
    S = _rand(gen, *batch, N, N, complex_=complex_) / math.sqrt(N)
    return S - (S.norm(dim=(-2, -1), keepdim=True) + 0.5) * torch.eye(N, dtype=S.dtype)


def _contractive(gen, batch, N, complex_=False):
    """A random Ā with spectral norm 0.9: its powers decay."""
    M = _rand(gen, *batch, N, N, complex_=complex_)
    return 0.9 * M / torch.linalg.matrix_norm(M, ord=2)[..., None, None]


def _stable_diag(gen, shape, complex_=True):
    re = -(0.1 + torch.rand(*shape, generator=gen, dtype=F64))
    return torch.complex(re, 3 * torch.randn(*shape, generator=gen, dtype=F64)) if complex_ else re


def _steps(gen, *shape):
    """Δ log-uniform in [1e-3, 1e-1], as S4 and Mamba draw it."""
    return torch.exp(math.log(1e-3) + torch.rand(*shape, generator=gen, dtype=F64) * math.log(100))


# ----------------------------------------------------------------------------
# The operations
# ----------------------------------------------------------------------------

OPS: dict[str, Op] = {}


def op(entry: Op) -> Op:
    OPS[entry.name] = entry
    return entry


def _discretize_make(s, g):
    A = _stable_matrix(g, s["batch"], s["N"], s["complex"])
    B = _rand(g, *s["batch"], s["N"], *([s["M"]] if s["M"] else []), complex_=s["complex"])
    dt = {"float": 0.05 + 0.4 * float(torch.rand(1, generator=g)),
          "0-dim": torch.tensor(0.3, dtype=F64),
          "batch": 0.05 + 0.4 * torch.rand(s["batch"], generator=g, dtype=F64)}[s["dt"]]
    return dict(A=A, B=B, dt=dt, method=s["method"])


op(Op("discretize",
      st.fixed_dictionaries(dict(batch=BATCH, N=st.integers(1, 6), M=st.sampled_from([None, 1, 3]),
                                 method=st.sampled_from(ssm_edu.METHODS), complex=st.booleans(),
                                 dt=st.sampled_from(["float", "0-dim", "batch"]))),
      _discretize_make,
      lambda x, impl: ssm_edu.discretize(x["A"], x["B"], x["dt"], method=x["method"], impl=impl),
      impls=("vectorized",), dtypes=(torch.float32, torch.float64, torch.bfloat16),
      poison="B", grow={"B": -2}))


def _discretize_diag_make(s, g):
    Lam = _stable_diag(g, s["shape"], s["complex"])
    B = _rand(g, *s["shape"], complex_=s["complex"])
    dt = 0.3 if s["dt"] == "float" else 0.05 + torch.rand(*s["shape"][:-1], 1, generator=g, dtype=F64)
    return dict(Lambda=Lam, B=B, dt=dt, method=s["method"])


op(Op("discretize_diag",
      st.fixed_dictionaries(dict(shape=st.sampled_from([(1,), (5,), (2, 3), (1, 2, 4)]), complex=st.booleans(),
                                 method=st.sampled_from(ssm_edu.METHODS), dt=st.sampled_from(["float", "rows"]))),
      _discretize_diag_make,
      lambda x, impl: ssm_edu.discretize_diag(x["Lambda"], x["B"], x["dt"], method=x["method"], impl=impl),
      impls=("vectorized",), dtypes=(torch.float32, torch.float64, torch.bfloat16), poison="B", grow={"B": -1}))


op(Op("ssm_kernel",
      st.fixed_dictionaries(dict(batch=st.sampled_from([(), (2,), (1, 3)]), N=st.integers(1, 6), L=LENGTHS,
                                 complex=st.booleans())),
      lambda s, g: dict(Ab=_contractive(g, s["batch"], s["N"], s["complex"]),
                        Bb=_rand(g, *s["batch"], s["N"], complex_=s["complex"]),
                        C=_rand(g, *s["batch"], s["N"], complex_=s["complex"]), L=s["L"]),
      lambda x, impl: ssm_edu.ssm_kernel(x["Ab"], x["Bb"], x["C"], x["L"], impl=impl),
      impls=("vectorized",), dtypes=(torch.float32, torch.float64, torch.bfloat16), poison="Bb", grow={"C": -1}))


def _lti(x, impl):
    """lti_recurrence has one implementation: its specification is K = ssm_kernel, y = K * u + D u."""
    if impl == "recurrence":
        return ssm_edu.lti_recurrence(x["Ab"], x["Bb"], x["C"], x["u"], D=x["D"])
    K = ssm_edu.ssm_kernel(x["Ab"], x["Bb"], x["C"], x["u"].shape[-1], impl="naive")
    u = x["u"].reshape(1, -1, x["u"].shape[-1])
    y = ssm_edu.causal_conv(u, K, impl="naive").reshape(x["u"].shape)
    return y if x["D"] is None else y + x["D"] * x["u"]


op(Op("lti_recurrence",
      st.fixed_dictionaries(dict(batch=st.sampled_from([(), (1,), (3,), (2, 2)]), N=st.integers(1, 5), L=LENGTHS,
                                 D=st.sampled_from([None, 0.5]))),
      lambda s, g: dict(Ab=_contractive(g, (), s["N"]), Bb=_rand(g, s["N"]), C=_rand(g, s["N"]),
                        u=_rand(g, *s["batch"], s["L"]), D=s["D"]),
      _lti, impls=("recurrence",), dtypes=(torch.float32, torch.float64, torch.bfloat16), poison="u", grow={"C": -1}))


op(Op("causal_conv",
      st.fixed_dictionaries(dict(b=st.integers(1, 3), H=st.integers(1, 3), L=LENGTHS, shared=st.booleans())),
      lambda s, g: dict(u=_rand(g, s["b"], s["H"], s["L"]), K=_rand(g, *([] if s["shared"] else [s["H"]]), s["L"])),
      lambda x, impl: ssm_edu.causal_conv(x["u"], x["K"], impl=impl),
      impls=("vectorized",), dtypes=(torch.float32, torch.float64, torch.bfloat16),
      triton=(torch.float32, torch.bfloat16),
      tiny=st.fixed_dictionaries(dict(b=st.integers(1, 2), H=st.integers(1, 2), L=TINY_LENGTHS, shared=st.booleans())),
      poison="u", grow={"K": -1}))


def _cauchy_make(s, g):
    v = _rand(g, *s["batch"], s["N"], complex_=True)
    w = _stable_diag(g, (*s["batch"], s["N"]))  # Re w <= -0.1
    z = 1j * 3 * torch.randn(s["L"], generator=g, dtype=F64)  # on the imaginary axis: |z - w| >= 0.1
    return dict(v=v, z=z.to(C128), w=w)


op(Op("cauchy",
      st.fixed_dictionaries(dict(batch=st.sampled_from([(), (2,), (2, 3)]), N=st.integers(1, 8), L=LENGTHS)),
      _cauchy_make,
      lambda x, impl: ssm_edu.cauchy(x["v"], x["z"], x["w"], impl=impl),
      impls=("vectorized",), triton=(torch.float32,),
      tiny=st.fixed_dictionaries(dict(batch=st.sampled_from([(), (2,)]), N=st.integers(1, 8), L=TINY_LENGTHS)),
      poison="v", grow={"w": -1}))


op(Op("s4d_kernel",
      st.fixed_dictionaries(dict(H=st.integers(1, 3), N=st.integers(1, 4), L=LENGTHS,
                                 method=st.sampled_from(["zoh", "bilinear"]))),
      lambda s, g: dict(A=_stable_diag(g, (s["H"], s["N"])), B=_rand(g, s["H"], s["N"], complex_=True),
                        C=_rand(g, s["H"], s["N"], complex_=True), dt=_steps(g, s["H"]), L=s["L"], method=s["method"]),
      lambda x, impl: ssm_edu.s4d_kernel(x["A"], x["B"], x["C"], x["dt"], x["L"], method=x["method"], impl=impl),
      impls=("vectorized",), poison="C", grow={"C": -1}))


def _s4_make(s, g):
    H, N = s["H"], s["N"]
    Lam = torch.complex(torch.full((H, N), -0.5, dtype=F64), 2 * torch.randn(H, N, generator=g, dtype=F64))
    return dict(Lambda=Lam, P=0.5 * _rand(g, H, N, complex_=True), B=_rand(g, H, N, complex_=True),
                C=_rand(g, H, N, complex_=True), dt=_steps(g, H), L=s["L"])


op(Op("s4_kernel",
      st.fixed_dictionaries(dict(H=st.integers(1, 2), N=st.integers(1, 6), L=LENGTHS)),
      _s4_make,
      lambda x, impl: ssm_edu.s4_kernel(x["Lambda"], x["P"], x["B"], x["C"], x["dt"], x["L"], impl=impl),
      impls=("vectorized",), triton=(torch.float32,),
      tiny=st.fixed_dictionaries(dict(H=st.integers(1, 2), N=st.integers(1, 4), L=TINY_LENGTHS)),
      # The generating function divides by (1 + ω) and sums L terms whose size varies by the
      # condition of (I - Ā^L): in complex64 it keeps about 4-5 digits (tests/test_s4.py: 1e-4).
      tol={torch.float32: 1e-4}, poison="C", grow={"P": -1}))


def _scan_make(s, g):
    shape = (*s["batch"], s["L"])
    a = 0.5 + 0.5 * torch.rand(*shape, generator=g, dtype=F64)  # decays in (0.5, 1)
    if s["complex"]:
        a = torch.polar(a, 2 * math.pi * torch.rand(*shape, generator=g, dtype=F64))
    return dict(a=a, b=_rand(g, *shape, complex_=s["complex"]),
                h0=_rand(g, *s["batch"], complex_=s["complex"]) if s["h0"] else None)


op(Op("linear_scan",
      st.fixed_dictionaries(dict(batch=BATCH, L=st.sampled_from([1, 2, 3, 5, 31, 64, 65, 130]), h0=st.booleans(),
                                 complex=st.booleans())),
      _scan_make,
      lambda x, impl: ssm_edu.linear_scan(x["a"], x["b"], h0=x["h0"], impl=impl),
      impls=("vectorized", "hillis_steele", "blocked"), dtypes=(torch.float32, torch.float64, torch.bfloat16),
      triton=(torch.float32, torch.bfloat16),
      tiny=st.fixed_dictionaries(dict(batch=st.sampled_from([(), (1,), (3,)]), L=TINY_LENGTHS, h0=st.booleans(),
                                      complex=st.just(False))),
      poison="b", grow={"b": -1}))


op(Op("impulse_response",
      st.fixed_dictionaries(dict(N=st.integers(1, 5), T=st.integers(1, 20), complex=st.booleans())),
      lambda s, g: dict(A=_stable_matrix(g, (), s["N"], s["complex"]), B=_rand(g, s["N"], complex_=s["complex"]),
                        C=_rand(g, s["N"], complex_=s["complex"]),
                        t=torch.sort(3 * torch.rand(s["T"], generator=g, dtype=F64)).values),
      lambda x, impl: ssm_edu.impulse_response(x["A"], x["B"], x["C"], x["t"], impl=impl),
      impls=("vectorized",), poison="B", grow={"C": -1}))

# ---- Selective SSMs (Mamba-1, -2, -3) and the delta rule -------------------


def _groups(g, heads):
    """A number of groups G that divides ``heads`` (G = 1 .. heads)."""
    return [d for d in range(1, heads + 1) if heads % d == 0][int(torch.randint(0, 10**6, (1,), generator=g)) % sum(
        1 for d in range(1, heads + 1) if heads % d == 0)]


def _selective_make(s, g):
    b, D, L, N = s["b"], s["D"], s["L"], s["N"]
    G = _groups(g, D)
    shapeBC = (b, N, L) if s["ungrouped"] else (b, G, N, L)
    return dict(u=_rand(g, b, D, L), delta=(_rand(g, b, D, L) if s["softplus"] else 0.01 + 0.5 * torch.rand(b, D, L, generator=g, dtype=F64)),
                A=-(0.1 + 2 * torch.rand(D, N, generator=g, dtype=F64)), B=_rand(g, *shapeBC), C=_rand(g, *shapeBC),
                D=_rand(g, D) if s["extras"] else None, z=_rand(g, b, D, L) if s["extras"] else None,
                delta_bias=0.1 * _rand(g, D) if s["extras"] else None, softplus=s["softplus"], last=s["last"])


SELECTIVE = dict(b=st.integers(1, 2), D=st.integers(1, 6), L=LENGTHS, N=st.integers(1, 5), ungrouped=st.booleans(),
                 softplus=st.booleans(), extras=st.booleans(), last=st.booleans())
op(Op("selective_scan",
      st.fixed_dictionaries(SELECTIVE),
      _selective_make,
      lambda x, impl: ssm_edu.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                                             delta_bias=x["delta_bias"], delta_softplus=x["softplus"],
                                             return_last_state=x["last"], impl=impl),
      impls=("vectorized", "chunked"), dtypes=(torch.float32, torch.float64, torch.bfloat16),
      triton=(torch.float32, torch.bfloat16),
      tiny=st.fixed_dictionaries({**SELECTIVE, "L": TINY_LENGTHS, "D": st.integers(1, 4), "N": st.integers(1, 4)}),
      poison="u", grow={"B": -1}))


def _state_update_make(s, g):
    b, N = s["b"], s["N"]
    chan = (s["H"], s["P"]) if s["headed"] else (s["H"],)
    G = _groups(g, s["H"])
    BC = (b, N) if s["ungrouped"] else (b, G, N)
    return dict(state=_rand(g, b, *chan, N), x=_rand(g, b, *chan), dt=0.01 + 0.5 * torch.rand(b, *chan, generator=g, dtype=F64),
                A=-(0.1 + 2 * torch.rand(*chan, N, generator=g, dtype=F64)), B=_rand(g, *BC), C=_rand(g, *BC),
                D=_rand(g, *chan) if s["extras"] else None, z=_rand(g, b, *chan) if s["extras"] else None)


def _state_update(x, impl):
    state = x["state"].clone() if isinstance(x["state"], torch.Tensor) else x["state"]  # updated in place: a copy each call
    out = ssm_edu.selective_state_update(state, x["x"], x["dt"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"], impl=impl)
    return out, state


STATE_UPDATE = dict(b=st.integers(1, 3), H=st.integers(1, 6), P=st.integers(1, 4), N=st.integers(1, 6),
                    headed=st.booleans(), ungrouped=st.booleans(), extras=st.booleans())
op(Op("selective_state_update",
      st.fixed_dictionaries(STATE_UPDATE), _state_update_make, _state_update,
      impls=("vectorized",), triton=(torch.float32,), tiny=st.fixed_dictionaries(STATE_UPDATE),
      poison="x", grow={"C": -1}))


def _ssd_make(s, g):
    b, L, H, P, N = s["b"], s["L"], s["H"], s["P"], s["N"]
    G = _groups(g, H)
    return dict(x=_rand(g, b, L, H, P), dt=0.01 + 0.5 * torch.rand(b, L, H, generator=g, dtype=F64),
                A=-(0.1 + 2 * torch.rand(H, generator=g, dtype=F64)), B=_rand(g, b, L, G, N), C=_rand(g, b, L, G, N),
                chunk=s["chunk"], D=_rand(g, H) if s["extras"] else None, z=_rand(g, b, L, H, P) if s["extras"] else None,
                initial_states=_rand(g, b, H, P, N) if s["h0"] else None, final=s["final"])


SSD = dict(b=st.integers(1, 2), L=LENGTHS, H=st.integers(1, 4), P=st.integers(1, 3), N=st.integers(1, 4),
           chunk=st.sampled_from([1, 3, 4, 16, 64]), extras=st.booleans(), h0=st.booleans(), final=st.booleans())
op(Op("ssd",
      st.fixed_dictionaries(SSD), _ssd_make,
      lambda x, impl: ssm_edu.ssd(x["x"], x["dt"], x["A"], x["B"], x["C"], chunk_size=x["chunk"], D=x["D"], z=x["z"],
                                  initial_states=x["initial_states"], return_final_states=x["final"], impl=impl),
      impls=("quadratic", "vectorized"), dtypes=(torch.float32, torch.float64, torch.bfloat16),
      triton=(torch.float32,), tiny=st.fixed_dictionaries({**SSD, "L": TINY_LENGTHS, "chunk": st.sampled_from([16, 32])}),
      poison="x", grow={"C": -1}))


def _mamba3_make(s, g):
    b, L, H, P, N = s["b"], s["L"], s["H"], s["P"], 2 * s["half_N"]
    G = _groups(g, H)
    R = (s["R"],) if s["R"] else ()
    return dict(x=_rand(g, b, L, H, *R, P), dt=0.01 + 0.5 * torch.rand(b, L, H, generator=g, dtype=F64),
                A=-(0.1 + 2 * torch.rand(b, L, H, generator=g, dtype=F64)), B=_rand(g, b, L, G, *R, N),
                C=_rand(g, b, L, G, *R, N), lam=torch.rand(b, L, H, generator=g, dtype=F64),
                theta=_rand(g, b, L, H, N // 2), D=_rand(g, H) if s["extras"] else None,
                z=_rand(g, b, L, H, *R, P) if s["extras"] else None, chunk=s["chunk"])


MAMBA3 = dict(b=st.integers(1, 2), L=LENGTHS, H=st.integers(1, 4), P=st.integers(1, 3), half_N=st.integers(1, 3),
              R=st.sampled_from([None, 1, 2]), chunk=st.sampled_from([1, 3, 16, 64]), extras=st.booleans())
op(Op("mamba3",
      st.fixed_dictionaries(MAMBA3), _mamba3_make,
      lambda x, impl: ssm_edu.mamba3(x["x"], x["dt"], x["A"], x["B"], x["C"], x["lam"], x["theta"], D=x["D"], z=x["z"],
                                     chunk_size=x["chunk"], impl=impl),
      impls=("quadratic", "vectorized"), dtypes=(torch.float32, torch.float64, torch.bfloat16),
      triton=(torch.float32,), tiny=st.fixed_dictionaries({**MAMBA3, "L": TINY_LENGTHS, "chunk": st.sampled_from([16, 32])}),
      poison="x", grow={"C": -1}))


def _delta_make(s, g):
    b, T, h, K, V = s["b"], s["T"], s["h"], s["K"], s["V"]
    k = _rand(g, b, T, h, K)
    return dict(q=_rand(g, b, T, h, K), k=k / k.norm(dim=-1, keepdim=True), v=_rand(g, b, T, h, V),
                beta=torch.rand(b, T, h, generator=g, dtype=F64),
                g=-0.5 * torch.rand(b, T, h, generator=g, dtype=F64) if s["gated"] else None,
                initial_state=_rand(g, b, h, K, V) if s["S0"] else None, chunk=s["chunk"], final=s["final"])


op(Op("delta_rule",
      st.fixed_dictionaries(dict(b=st.integers(1, 2), T=LENGTHS, h=st.integers(1, 3), K=st.integers(1, 5),
                                 V=st.integers(1, 4), gated=st.booleans(), S0=st.booleans(), final=st.booleans(),
                                 chunk=st.sampled_from([1, 3, 16, 64]))),
      _delta_make,
      lambda x, impl: ssm_edu.delta_rule(x["q"], x["k"], x["v"], x["beta"], g=x["g"], initial_state=x["initial_state"],
                                         return_final_state=x["final"], chunk_size=x["chunk"], impl=impl),
      impls=("vectorized",), dtypes=(torch.float32, torch.float64, torch.bfloat16), poison="v", grow={"v": 1}))

# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------


def _cast(x, dtype):
    """Tensors to ``dtype`` (complex ones to the matching complex dtype); the rest unchanged."""
    if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.is_complex()):
        return x
    return x.to(COMPLEX_OF[dtype] if x.is_complex() else dtype)


def _layout(x, how):
    """The same values in another memory layout: strided (every other element) or transposed."""
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return x
    if how == "strided":
        return torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]
    if how == "transposed" and x.dim() >= 2:
        return x.mT.contiguous().mT
    return x


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


# impl="triton" runs compiled kernels on a machine with a GPU (and the interpreter on CPU tensors only without
# one): there its inputs go to the GPU, and its outputs come back to be compared with the float64 reference.
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _on(x, impl):
    return x.to(TRITON_DEVICE) if impl == "triton" and isinstance(x, torch.Tensor) else x


def _back(outs):
    return tuple(o.cpu() if isinstance(o, torch.Tensor) else o for o in outs)


def _check_agree(entry, inputs, impl, dtype, layout):
    low = {k: _cast(v, dtype) for k, v in inputs.items()}
    ref = _outputs(entry.call({k: _cast(v, F64) for k, v in low.items()}, "naive"))
    out = _back(_outputs(entry.call({k: _layout(_on(v, impl), layout) for k, v in low.items()}, impl)))
    tol = entry.tol.get(dtype, tolerance(dtype))
    for i, (o, r) in enumerate(zip(out, ref)):
        expected = (COMPLEX_OF[dtype] if r.is_complex() else dtype) if dtype != F64 else r.dtype
        assert o.shape == r.shape, f"{entry.name} {impl} output {i}: shape {tuple(o.shape)} != {tuple(r.shape)}"
        assert o.dtype == expected, f"{entry.name} {impl} {dtype} output {i}: dtype {o.dtype}, expected {expected}"
        err = rel_error(o, r)
        assert err < tol, f"{entry.name} {impl} {dtype} {layout} output {i}: rel error {err:.3g} >= {tol:g}"


def _seed(data):
    return torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))


# ----------------------------------------------------------------------------
# The properties
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_impl_agrees_with_naive(name):
    entry = OPS[name]

    @settings(max_examples=entry.examples, **SETTINGS)
    @given(data=st.data())
    def check(data):
        sizes = data.draw(entry.sizes, label="sizes")
        inputs = entry.make(sizes, _seed(data))
        impl = data.draw(st.sampled_from(entry.impls), label="impl")
        dtype = data.draw(st.sampled_from(entry.dtypes), label="dtype")
        layout = data.draw(st.sampled_from(["contiguous", "strided", "transposed"]), label="layout")
        _check_agree(entry, inputs, impl, dtype, layout)

    check()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, e in OPS.items() if e.triton))
def test_triton_agrees_with_naive(name):
    """The Triton kernel (compiled on a GPU, in the CPU interpreter without one): tiny sizes, non-contiguous inputs too."""
    entry = OPS[name]

    @settings(max_examples=6, **SETTINGS)
    @given(data=st.data())
    def check(data):
        sizes = data.draw(entry.tiny, label="sizes")
        inputs = entry.make(sizes, _seed(data))
        dtype = data.draw(st.sampled_from(entry.triton), label="dtype")
        layout = data.draw(st.sampled_from(["contiguous", "strided", "transposed"]), label="layout")
        _check_agree(entry, inputs, "triton", dtype, layout)

    check()


def _impls(entry):
    return ["naive", *entry.impls] + (["triton"] if entry.triton else [])


@pytest.mark.parametrize("name", sorted(OPS))
def test_nan_propagates(name):
    """A NaN in an input is not an error: it comes out as NaN (module docstrings)."""
    entry = OPS[name]

    @settings(max_examples=3, **SETTINGS)
    @given(data=st.data())
    def check(data):
        inputs = entry.make(data.draw(entry.tiny if entry.tiny is not None else entry.sizes, label="sizes"), _seed(data))
        x = inputs[entry.poison].clone()
        x.view(-1)[data.draw(st.integers(0, x.numel() - 1), label="where")] = float("nan")
        inputs[entry.poison] = x
        for impl in _impls(entry):
            dtype = torch.float32 if impl == "triton" else F64
            low = {k: _on(_cast(v, dtype), impl) for k, v in inputs.items()}
            out = _back(_outputs(entry.call(low, impl)))[-1]
            assert torch.isnan(out).any(), f"{name} {impl}: a NaN in {entry.poison} vanished"

    check()


@pytest.mark.parametrize("impl", ["naive", "vectorized", "hillis_steele", "blocked", "triton"])
def test_linear_scan_nan_from_its_step_on(impl):
    """The documented detail: a NaN at step t makes h NaN from t on, and only from t on."""
    a, b = torch.full((2, 9), 0.9), torch.randn(2, 9)
    b[0, 4] = float("nan")
    h = _back((ssm_edu.linear_scan(_on(a, impl), _on(b, impl), impl=impl),))[0]
    assert torch.isnan(h[0, 4:]).all() and torch.isfinite(h[0, :4]).all() and torch.isfinite(h[1]).all()


def _bad_calls(entry, inputs):
    """(argument, bad inputs) pairs: a wrong dtype, another device, not a tensor, a mismatched size."""
    tensors = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]
    for k in tensors:
        yield k, "dtype", {**inputs, k: inputs[k].round().to(torch.int64) if not inputs[k].is_complex() else inputs[k].real.to(torch.int64)}
        yield k, "device", {**inputs, k: inputs[k].to("meta")}
        if inputs[k].dim() > 0:  # a 0-dim tensor's tolist() is a plain number, which a scalar argument accepts
            yield k, "type", {**inputs, k: inputs[k].tolist()}
    for k, dim in entry.grow.items():
        x = inputs[k]
        yield k, "shape", {**inputs, k: torch.cat([x, x.narrow(dim, 0, 1)], dim=dim)}


@pytest.mark.parametrize("name", sorted(OPS))
def test_bad_input_is_rejected_with_its_name(name):
    entry = OPS[name]
    g = torch.Generator().manual_seed(0)
    inputs = entry.make(_first_example(entry), g)
    for arg, kind, bad in _bad_calls(entry, inputs):
        impl = entry.impls[0]
        with pytest.raises((ValueError, TypeError)) as info:
            entry.call(bad, impl)
        message = str(info.value)
        wanted = "device" if kind == "device" else arg
        assert wanted in message, f"{name}: {kind} of {arg}: the message does not name it: {message}"


def _first_example(entry):
    """A fixed, mid-sized example of the op's sizes (the same on every run)."""
    found = []

    @settings(max_examples=20, **SETTINGS)
    @given(entry.sizes)
    def collect(sizes):
        found.append(sizes)

    collect()
    # the largest example drawn: a length-1 example cannot show a mismatched length
    return max(found, key=lambda s: sum(v if isinstance(v, int) else len(v) if isinstance(v, tuple) else 0
                                        for v in s.values() if not isinstance(v, bool)))


def test_hippo_impls_agree():
    """hippo has no tensor input: every measure and size, vectorized against naive, exactly."""
    for measure in ssm_edu.MEASURES:
        for N in (1, 2, 3, 7, 16):
            for got, want in zip(ssm_edu.hippo(N, measure, impl="vectorized"), ssm_edu.hippo(N, measure, impl="naive")):
                assert got.dtype == F64 and rel_error(got, want) < 1e-14, (measure, N)
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="N"):
            ssm_edu.hippo(bad)
    with pytest.raises(ValueError, match="measure"):
        ssm_edu.hippo(4, "legendre")


def test_every_api_operation_is_covered():
    """Each operation of API.md that ssm_edu exports has an entry here (hippo has its own test)."""
    api = ["discretize", "discretize_diag", "hippo", "ssm_kernel", "lti_recurrence", "causal_conv", "cauchy",
           "s4d_kernel", "s4_kernel", "linear_scan", "selective_scan", "selective_state_update", "ssd", "mamba3",
           "delta_rule"]
    missing = [n for n in api if hasattr(ssm_edu, n) and n not in OPS and n != "hippo"]
    assert not missing, f"add an entry to OPS for: {missing}"
