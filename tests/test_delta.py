"""delta_rule (chapter 11): tiers, the oracles of the spec, chunk-size independence, gradients, bad input."""

import pytest
import torch

from ssm_edu import delta_rule
from ssm_edu.numerics import rel_error
from tiers import assert_tiers_agree


def inputs(b, T, h, K, V, gen, gated=True, state=False, dtype=torch.float64):
    q = torch.randn(b, T, h, K, generator=gen, dtype=dtype)
    k = torch.nn.functional.normalize(torch.randn(b, T, h, K, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(b, T, h, V, generator=gen, dtype=dtype)
    beta = torch.rand(b, T, h, generator=gen, dtype=dtype)
    kw = {}
    if gated:
        kw["g"] = -0.2 * torch.rand(b, T, h, generator=gen, dtype=dtype)  # α in (0.82, 1]
    if state:
        kw["initial_state"] = torch.randn(b, h, K, V, generator=gen, dtype=dtype)
    return (q, k, v, beta), kw


CASES = [(1, 1, 1, 4, 3), (2, 7, 3, 8, 5), (1, 65, 2, 16, 16), (2, 130, 1, 8, 4)]


@pytest.mark.parametrize("b,T,h,K,V", CASES)
@pytest.mark.parametrize("gated,state", [(False, False), (True, False), (True, True)])
def test_tiers(b, T, h, K, V, gated, state):
    def make(dtype, gen):
        args, kw = inputs(b, T, h, K, V, gen, gated, state)
        return args, kw | {"return_final_state": True}

    assert_tiers_agree(delta_rule, make, ["vectorized"], dtypes=(torch.float32, torch.bfloat16), label=f"{b, T, h, K, V}")


@pytest.mark.parametrize("chunk", [1, 5, 16, 64, 200])
def test_chunk_size_does_not_change_the_result(chunk):
    args, kw = inputs(2, 37, 2, 8, 4, torch.Generator().manual_seed(1), state=True)
    ref = delta_rule(*args, **kw, impl="naive")
    assert rel_error(delta_rule(*args, **kw, chunk_size=chunk, impl="vectorized"), ref) < 1e-12


def test_overwrite_with_orthonormal_keys():
    """β = 1 with orthonormal keys: after writing (k_i, v_i) the state returns v_i for k_i exactly."""
    K = V = 8
    keys = torch.linalg.qr(torch.randn(K, K, dtype=torch.float64))[0].T  # rows orthonormal
    k = keys[None, :, None, :]  # (1, T=K, 1, K)
    v = torch.randn(1, K, 1, V, dtype=torch.float64)
    S0 = torch.randn(1, 1, K, V, dtype=torch.float64)  # whatever was there is overwritten
    for impl in ("naive", "vectorized"):
        _, S = delta_rule(k, k, v, torch.ones(1, K, 1, dtype=torch.float64), initial_state=S0,
                          return_final_state=True, impl=impl)
        assert torch.allclose(torch.einsum("kv,tk->tv", S[0, 0], keys), v[0, :, 0], atol=1e-12)


def test_zero_gate_is_deltanet():
    args, kw = inputs(2, 20, 2, 8, 4, torch.Generator().manual_seed(2), gated=False)
    for impl in ("naive", "vectorized"):
        assert torch.equal(delta_rule(*args, g=torch.zeros_like(args[3]), impl=impl), delta_rule(*args, impl=impl))


def test_without_the_correction_it_is_a_decayed_linear_attention():
    """With β·kkᵀ dropped (here: keys orthogonal to everything written before) the output is Σ γ β (qᵀk) v."""
    T, K = 4, 4
    k = torch.eye(K, dtype=torch.float64)[None, :, None, :]  # k_t = e_t: each key new, the correction is zero
    q = torch.randn(1, T, 1, K, dtype=torch.float64)
    v = torch.randn(1, T, 1, 3, dtype=torch.float64)
    beta = torch.rand(1, T, 1, dtype=torch.float64)
    g = -torch.rand(1, T, 1, dtype=torch.float64)
    G = torch.cumsum(g[0, :, 0], 0)
    ref = torch.stack([sum(torch.exp(G[t] - G[s]) * beta[0, s, 0] * (q[0, t, 0] @ k[0, s, 0]) * v[0, s, 0] for s in range(t + 1)) for t in range(T)])
    out = delta_rule(q, k, v, beta, g, scale=1.0, impl="vectorized")
    assert torch.allclose(out[0, :, 0], ref, atol=1e-12)


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
def test_gradcheck(impl):
    args, kw = inputs(1, 6, 1, 3, 2, torch.Generator().manual_seed(3), state=True)
    leaves = [a.requires_grad_() for a in (*args, kw["g"], kw["initial_state"])]

    def f(q, k, v, beta, g, S0):
        return delta_rule(q, k, v, beta, g, initial_state=S0, chunk_size=4, impl=impl)

    assert torch.autograd.gradcheck(f, leaves)


def test_bad_input():
    args, _ = inputs(2, 5, 3, 4, 6, torch.Generator().manual_seed(4), dtype=torch.float32)
    q, k, v, beta = args
    with pytest.raises(ValueError, match=r"k must have shape \(b, T, h, K\) = \(2, 5, 3, 4\)"):
        delta_rule(q, k[..., :3], v, beta)
    with pytest.raises(ValueError, match="beta must have shape"):
        delta_rule(q, k, v, beta[..., None])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        delta_rule(q, k, v, beta, initial_state=torch.zeros(2, 3, 6, 4))
    with pytest.raises(ValueError, match="unknown impl"):
        delta_rule(q, k, v, beta, impl="triton")
    with pytest.raises(ValueError, match="dtype int64"):
        delta_rule(q, k, v.long(), beta)
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule(q, k, v, beta, chunk_size=0)
    with pytest.raises(ValueError, match="T must be >= 1"):
        delta_rule(q[:, :0], k[:, :0], v[:, :0], beta[:, :0])
