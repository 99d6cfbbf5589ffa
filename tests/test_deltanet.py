"""The (Gated) DeltaNet block (chapter 11): the step reproduces forward, forward is delta_rule on the
block's own inputs, the one-step delta rule, initialisation, gradients, bad input."""

import pytest
import torch
import torch.nn.functional as F

from ssm_edu import delta_rule
from ssm_edu.deltanet import DeltaNet, delta_step, deltanet_block
from ssm_edu.lm import SequenceModel, generate
from ssm_edu.numerics import rel_error, tolerance


def block(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_model=12, n_heads=2, head_k_dim=4, head_v_dim=3, chunk_size=5)
    cfg.update(kw)
    m = DeltaNet(**cfg).to(dtype)
    with torch.no_grad():  # a trained-looking norm weight, so that it matters
        m.norm.weight.uniform_(0.5, 1.5)
    return m


def decode(m, u):
    cache = m.allocate_cache(u.shape[0])
    with torch.no_grad():
        out = torch.stack([m.step(u[:, t], cache) for t in range(u.shape[1])], dim=1)
    return out, cache


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("batch,L", [(1, 1), (2, 13), (1, 5), (3, 11)])
def test_step_reproduces_forward_float64(gated, batch, L):
    m = block(gated=gated)
    u = torch.randn(batch, L, 12, dtype=torch.float64)
    with torch.no_grad():
        ref = m(u)
    out, _ = decode(m, u)
    assert out.shape == ref.shape == (batch, L, 12)
    assert rel_error(out, ref) < 1e-12


def test_step_reproduces_forward_float32_and_the_final_state():
    m = block(torch.float32, d_model=16, n_heads=3, head_k_dim=8, head_v_dim=5, chunk_size=8)
    u = torch.randn(2, 21, 16)
    with torch.no_grad():
        ref = m(u)
        s = m.delta_inputs(u)
        _, S = delta_rule(s["q"], s["k"], s["v"], s["beta"], s["g"], return_final_state=True, impl="naive")
    out, cache = decode(m, u)
    assert rel_error(out, ref) < tolerance(torch.float32)
    assert rel_error(cache["S"], S) < tolerance(torch.float32)  # the decoder's state is delta_rule's final state


@pytest.mark.parametrize("gated", [True, False])
def test_forward_is_the_delta_rule_of_its_inputs_then_the_gated_norm(gated):
    """An independent path: the loop delta_rule on the block's own inputs, then RMSNorm(o·SiLU(z)) per head by hand."""
    m = block(gated=gated)
    u = torch.randn(2, 9, 12, dtype=torch.float64)
    with torch.no_grad():
        s = m.delta_inputs(u)
        o = delta_rule(s["q"], s["k"], s["v"], s["beta"], s["g"], impl="naive")  # (2, 9, H, V)
        g = o * F.silu(s["z"]).unflatten(-1, (2, 3))
        ref = m.out_proj((g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).flatten(-2) * m.norm.weight)
        assert rel_error(m(u), ref) < 1e-12
    # what the layer hands to the op: unit q and k, β in (0, 1), g <= 0 (α in (0, 1])
    assert torch.allclose(s["q"].norm(dim=-1), torch.ones(2, 9, 2, dtype=torch.float64))
    assert torch.allclose(s["k"].norm(dim=-1), torch.ones(2, 9, 2, dtype=torch.float64))
    assert ((s["beta"] > 0) & (s["beta"] < 1)).all()
    assert (s["g"] is None) if not gated else (s["g"] <= 0).all()


@pytest.mark.parametrize("K,V,gated", [(1, 1, True), (5, 3, True), (4, 7, False)])
def test_delta_step_is_one_step_of_delta_rule(K, V, gated):
    gen = torch.Generator().manual_seed(K * 10 + V)
    b, H, T = 2, 3, 6
    q, k = (F.normalize(torch.randn(b, T, H, K, generator=gen, dtype=torch.float64), dim=-1) for _ in range(2))
    v = torch.randn(b, T, H, V, generator=gen, dtype=torch.float64)
    beta = torch.rand(b, T, H, generator=gen, dtype=torch.float64)
    g = -torch.rand(b, T, H, generator=gen, dtype=torch.float64) if gated else None
    S0 = torch.randn(b, H, K, V, generator=gen, dtype=torch.float64)
    ref, S_ref = delta_rule(q, k, v, beta, g, initial_state=S0, return_final_state=True, impl="naive")
    S = S0.clone()
    out = torch.stack([delta_step(S, q[:, t], k[:, t], v[:, t], beta[:, t], None if g is None else g[:, t])
                       for t in range(T)], dim=1)
    assert rel_error(out, ref) < 1e-13 and rel_error(S, S_ref) < 1e-13


def test_parameters_and_state_size():
    m = block(n_heads=2, head_k_dim=4, head_v_dim=3)
    assert m.state_size == 2 * 4 * 3
    cache = m.allocate_cache(5)
    assert cache["S"].shape == (5, 2, 4, 3) and cache["conv"].shape == (5, 2 * 2 * 4 + 2 * 3, 4)
    A = torch.exp(m.A_log)
    assert ((A >= 0) & (A <= 16)).all() and m.A_log._no_weight_decay
    dt = F.softplus(m.dt_bias)
    assert ((dt > 1e-4 * 0.99) & (dt < 0.1 * 1.01)).all()
    plain = block(gated=False)
    assert not hasattr(plain, "A_log") and not hasattr(plain, "dt_bias")
    assert plain.in_proj.out_features == m.in_proj.out_features - 2  # no decay projection


@pytest.mark.heavy  # 52 s in the GPU test phase of 2026-12-07: started first there
def test_model_generates_through_the_recurrence_and_trains():
    torch.manual_seed(0)
    model = SequenceModel(11, 16, 2, deltanet_block(n_heads=2, head_k_dim=4, head_v_dim=8, chunk_size=4)).double()
    prompt = torch.randint(0, 11, (2, 5))
    a = generate(model, prompt, 6, temperature=0, recurrent=True)
    b = generate(model, prompt, 6, temperature=0, recurrent=False)
    assert torch.equal(a, b)
    model(torch.randint(0, 11, (2, 9))).logsumexp(-1).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    blk = model.blocks[0]
    assert blk.A_log.grad.abs().sum() > 0 and blk.dt_bias.grad.abs().sum() > 0 and blk.conv1d.weight.grad.abs().sum() > 0


def test_bad_input():
    m = block()
    with pytest.raises(ValueError, match="u must have shape"):
        m(torch.randn(2, 5, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="u must have shape"):
        m.step(torch.randn(2, 5, 12, dtype=torch.float64), m.allocate_cache(2))
