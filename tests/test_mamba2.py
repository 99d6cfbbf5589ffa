"""The Mamba-2 block (chapter 8): forward through ssd, decoding through the headed
selective_state_update, initialisation, gated RMSNorm, gradients, bad configurations."""

import math

import pytest
import torch
import torch.nn.functional as F

import ssm_edu
from ssm_edu.mamba2 import Mamba2, RMSNormGated, ssd_cost
from ssm_edu.numerics import rel_error, tolerance
from ssm_edu.ssd import ssd_naive

ON_GPU = ssm_edu.default_device().type == "cuda"


def block(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_model=16, d_state=8, headdim=8, expand=2, ngroups=2, chunk_size=5)
    cfg.update(kw)
    m = Mamba2(**cfg).to(dtype)
    with torch.no_grad():  # a trained-looking conv bias and norm weight, so that both matter
        m.conv1d.bias.normal_()
        m.norm.weight.uniform_(0.5, 1.5)
    return m


def decode(m, u, impl=None):
    """Feed u (b, L, d) through ``step`` one token at a time -> (b, L, d), final ssm state."""
    if impl is not None:
        m.impl = impl
    cache = m.allocate_cache(u.shape[0])
    with torch.no_grad():
        out = torch.stack([m.step(u[:, t], cache) for t in range(u.shape[1])], dim=1)
    return out, cache["ssm"]


@pytest.mark.parametrize("batch,L", [(1, 1), (2, 13), (1, 5), (3, 17)])
def test_decoding_reproduces_forward_float64(batch, L):
    m = block()
    u = torch.randn(batch, L, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = m(u)
    out, _ = decode(m, u)
    assert out.shape == ref.shape == (batch, L, 16)
    assert rel_error(out, ref) < 1e-12


def test_decoding_reproduces_forward_float32_and_final_state():
    m = block(torch.float32, ngroups=1)
    u = torch.randn(2, 23, 16)
    with torch.no_grad():
        ref = m(u)
        s = m.ssm_inputs(u)
        _, final = ssm_edu.ssd(s["x"], s["dt"], s["A"], s["B"], s["C"], D=m.D, dt_bias=m.dt_bias, dt_softplus=True,
                               return_final_states=True, impl="vectorized")
    out, state = decode(m, u, impl="vectorized")
    assert rel_error(out, ref) < tolerance(torch.float32)
    assert rel_error(state, final) < tolerance(torch.float32)  # the decoder's state is ssd's final state


def test_decoding_with_the_triton_state_update():
    """The headed Triton kernel (interpreter on CPU) with dt, A, D, dt_bias broadcast over P and N."""
    m = block(torch.float32)
    u = torch.randn(2, 6, 16)
    with torch.no_grad():
        ref = m.to(ssm_edu.default_device())(u.to(ssm_edu.default_device()))
    out, _ = decode(m, u.to(ssm_edu.default_device()), impl="triton")
    assert rel_error(out, ref) < tolerance(torch.float32)


def test_forward_is_ssd_of_its_inputs_then_gated_norm():
    """An independent path: the loop ssd_naive on the block's own inputs, then RMSNorm(y·SiLU(z)) by hand."""
    m = block(ngroups=1)
    u = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        s = m.ssm_inputs(u)
        y = ssd_naive(s["x"], s["dt"], s["A"], s["B"], s["C"], D=m.D, dt_bias=m.dt_bias, dt_softplus=True)
        g = y.flatten(-2) * F.silu(s["z"])
        g = g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5) * m.norm.weight
        assert rel_error(m(u), m.out_proj(g)) < 1e-12


def test_result_does_not_depend_on_chunk_size_or_impl():
    m = block()
    u = torch.randn(2, 11, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = m(u)
        for impl, Q in (("naive", 5), ("quadratic", 5), ("vectorized", 1), ("vectorized", 4), ("vectorized", 64)):
            m.impl, m.chunk_size = impl, Q
            assert rel_error(m(u), ref) < 1e-12, (impl, Q)


def test_conv_is_causal():
    """Changing the input at position t changes no output before t."""
    m = block()
    u = torch.randn(1, 12, 16, dtype=torch.float64)
    v = u.clone()
    v[:, 7] += 1.0
    with torch.no_grad():
        a, b = m(u), m(v)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_initialisation_follows_mamba_ssm():
    torch.manual_seed(1)
    m = Mamba2(64, d_state=16, headdim=16, expand=2)
    assert m.nheads == 8 and m.in_proj.out_features == 2 * 128 + 2 * 16 + 8
    A = -torch.exp(m.A_log)
    assert ((A <= -1) & (A >= -16)).all()
    dt = F.softplus(m.dt_bias)
    assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 1e-1 * (1 + 1e-5))).all()
    assert torch.equal(m.D, torch.ones(8))
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.A_log, m.D, m.dt_bias))
    assert m.conv1d.weight.shape == (m.conv_dim, 1, 4) and m.conv_dim == 128 + 2 * 16


def test_gated_rmsnorm_groups():
    torch.manual_seed(0)
    norm = RMSNormGated(8, group_size=4)
    y, z = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    g = (y * F.silu(z)).view(3, 2, 4)
    ref = (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).view(3, 8)
    assert rel_error(norm.double()(y, z), ref) < 1e-14
    with pytest.raises(ValueError, match="group_size 3 must divide d = 8"):
        RMSNormGated(8, group_size=3)


def test_gradcheck_through_the_block():
    m = block(d_model=4, d_state=2, headdim=2, expand=1, ngroups=1, chunk_size=3)
    u = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (u,))
    m(u).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("kw,message", [
    (dict(headdim=5), "headdim P = 5 must divide expand \\* d_model = 32"),
    (dict(headdim=8, ngroups=3), "ngroups G = 3 must divide the number of heads H = 4"),
])
def test_bad_configuration(kw, message):
    with pytest.raises(ValueError, match=message):
        Mamba2(16, **kw)


def test_bad_input_names_the_argument():
    m = block()
    with pytest.raises(ValueError, match=r"Mamba2: u must have shape \(batch, L, 16\); got \(2, 7, 15\)"):
        m(torch.randn(2, 7, 15, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"Mamba2.step: u must have shape \(batch, 16\); got \(2, 1, 16\)"):
        m.step(torch.randn(2, 1, 16, dtype=torch.float64), m.allocate_cache(2))


def test_ssd_cost_limits():
    L, N, P = 64, 8, 4
    one = ssd_cost(L, 1, N, P)  # Q = 1: the recurrence, one state per step
    assert one["1 diagonal blocks"] == L * (N + P) and one["state_memory"] == L * N * P
    full = ssd_cost(L, L, N, P)  # Q = L: the quadratic form, one chunk
    assert full["1 diagonal blocks"] == L * L * (N + P) and full["state_memory"] == N * P
    odd = ssd_cost(100, 64, N, P)  # L not a multiple of Q: the last chunk is padded
    assert odd["2 chunk states"] == 2 * 64 * N * P
    assert math.isclose(one["total"], sum(v for k, v in one.items() if k[0].isdigit()))


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
def test_gpu_block_bf16_decoding_matches_forward():
    m = block(torch.float32).cuda()
    m.impl = "triton"
    u = torch.randn(2, 40, 16, device="cuda")
    with torch.no_grad():
        ref = m(u)
    out, _ = decode(m, u)
    assert rel_error(out, ref) < tolerance(torch.float32)


def test_block_protocol_in_a_sequence_model():
    """ssm_edu.lm's contract: step logits == forward logits, and recurrent generation == re-running forward."""
    from ssm_edu.lm import SequenceModel, generate
    from ssm_edu.mamba2 import mamba2_block

    torch.manual_seed(0)
    model = SequenceModel(11, 16, 2, block=mamba2_block(d_state=8, headdim=8, chunk_size=4)).double().eval()
    idx = torch.randint(0, 11, (2, 9))
    with torch.no_grad():
        ref = model(idx)
        caches = model.allocate_cache(2)
        out = torch.stack([model.step(idx[:, t], caches) for t in range(9)], dim=1)
    assert caches[0]["ssm"].shape == (2, 4, 8, 8) and caches[0]["ssm"].dtype == torch.float64
    assert rel_error(out, ref) < 1e-12
    fast = generate(model, idx[:, :3], 6, temperature=0, recurrent=True)
    slow = generate(model, idx[:, :3], 6, temperature=0, recurrent=False)
    assert torch.equal(fast, slow)
