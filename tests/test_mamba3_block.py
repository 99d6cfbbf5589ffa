"""The Mamba-3 block (chapter 9) and the state-tracking tasks: decoding through mamba3_step
reproduces forward, SISO and MIMO, rope fractions, initialisation, gradients, bad configurations,
the decode cost count, and parity / modular counting (with a hand-built rotation that solves them)."""

import math

import pytest
import torch

import ssm_edu
from ssm_edu.lm import SequenceModel, generate
from ssm_edu.mamba3_block import (A_ACTIVATIONS, Mamba3, mamba3_block, mamba3_decode_cost, rope_pairs, rotation_counter,
                                  rotation_readout, trapezoid_error)
from ssm_edu.numerics import rel_error, tolerance
from ssm_edu.tasks import IGNORE_INDEX, TASKS, modular_counting, parity

ON_GPU = ssm_edu.default_device().type == "cuda"


def block(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_model=16, d_state=8, headdim=8, expand=2, chunk_size=5)
    cfg.update(kw)
    m = Mamba3(**cfg).to(dtype)
    with torch.no_grad():  # trained-looking biases, norms and MIMO scales, so that all of them matter
        m.B_bias.uniform_(0.5, 1.5)
        m.C_bias.uniform_(0.5, 1.5)
        m.B_norm.weight.uniform_(0.5, 1.5)
        m.D.uniform_(0.5, 1.5)
        if m.mimo:
            for p in (m.mimo_x, m.mimo_z, m.mimo_o):
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
    return m


def decode(m, u):
    """Feed u (b, L, d) through ``step`` one token at a time -> (b, L, d), final cache."""
    cache = m.allocate_cache(u.shape[0])
    with torch.no_grad():
        out = torch.stack([m.step(u[:, t], cache) for t in range(u.shape[1])], dim=1)
    return out, cache["state"]


CONFIGS = [dict(), dict(mimo_rank=2), dict(mimo_rank=4, ngroups=2), dict(rope_fraction=1.0),
           dict(rope_fraction=0.0), dict(A_activation="softplus", ngroups=2)]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "siso")
@pytest.mark.parametrize("batch,L", [(1, 1), (2, 13), (3, 6)])
def test_decoding_reproduces_forward_float64(kw, batch, L):
    m = block(**kw)
    u = torch.randn(batch, L, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = m(u)
    out, _ = decode(m, u)
    assert out.shape == ref.shape == (batch, L, 16)
    assert rel_error(out, ref) < 1e-12


@pytest.mark.parametrize("mimo_rank", [None, 2])
def test_decoding_float32_and_final_state(mimo_rank):
    m = block(torch.float32, mimo_rank=mimo_rank)
    u = torch.randn(2, 23, 16)
    with torch.no_grad():
        ref = m(u)
        s = m.ssm_inputs(u)
        _, final = ssm_edu.mamba3(s["x"], s["dt"], s["A"], s["B"], s["C"], s["lam"], s["theta"], D=m.D, z=s["z"],
                                  return_final_state=True, impl="naive")
    out, state = decode(m, u)
    assert rel_error(out, ref) < tolerance(torch.float32)
    assert state.h.dtype == torch.float32
    for got, want in zip(state, final):  # the decoder's cache is the scan's final state (h, angle, k, x)
        assert rel_error(got, want) < tolerance(torch.float32)


def test_forward_is_mamba3_of_its_inputs_and_impls_agree():
    m = block(chunk_size=4)
    u = torch.randn(2, 11, 16, dtype=torch.float64)
    with torch.no_grad():
        s = m.ssm_inputs(u)
        y = ssm_edu.mamba3(s["x"], s["dt"], s["A"], s["B"], s["C"], s["lam"], s["theta"], D=m.D, z=s["z"],
                           impl="naive")
        ref = m.out_proj(y.flatten(-2))
        outs = {}
        for impl in ("naive", "quadratic", "vectorized"):
            m.impl = impl
            outs[impl] = m(u)
    for impl, out in outs.items():
        assert rel_error(out, ref) < 1e-12, impl


def test_forward_with_the_triton_scan():
    """The block with impl="triton" (Triton's interpreter on a CPU; compiled on a GPU, where the block and its
    input must be on the GPU) in float32, against the same block in float64."""
    device = ssm_edu.default_device()
    m = block(torch.float64, chunk_size=8).to(device)
    u = torch.randn(1, 12, 16, dtype=torch.float64, device=device)
    with torch.no_grad():
        m.impl = "vectorized"
        ref = m(u)
        m.float()
        m.impl = "triton"
        out = m(u.float())
    assert out.device.type == device.type and out.dtype == torch.float32
    assert rel_error(out, ref) < tolerance(torch.float32)


def test_ssm_inputs_ranges_and_shapes():
    m = block(mimo_rank=3, rope_fraction=0.5, d_state=10)  # N = 10: 5 dims rotate -> 4 -> S = 2 pairs
    u = 5 * torch.randn(2, 7, 16, dtype=torch.float64)
    s = m.ssm_inputs(u)
    H, R, P, N = m.nheads, 3, m.headdim, 10
    assert s["x"].shape == s["z"].shape == (2, 7, H, R, P)
    assert s["B"].shape == s["C"].shape == (2, 7, H, R, N)
    assert s["theta"].shape == (2, 7, H, N // 2) and s["angle"].shape == (2, 7, 2)
    assert (s["A"] <= -m.A_floor).all() and (s["dt"] > 0).all()
    assert ((s["lam"] > 0) & (s["lam"] < 1)).all()
    assert (s["theta"].abs() <= math.pi).all() and (s["theta"][..., 2:] == 0).all()  # unrotated pairs
    assert torch.equal(s["theta"][:, :, 0], s["theta"][:, :, -1])  # the angles are shared by the heads


def test_rope_pairs_and_rope_off():
    assert rope_pairs(128, 0.5) == 32 and rope_pairs(128, 1.0) == 64 and rope_pairs(10, 0.5) == 2
    assert rope_pairs(64, 0.0) == 0
    m = block(rope_fraction=0.0)
    s = m.ssm_inputs(torch.randn(1, 4, 16, dtype=torch.float64))
    assert (s["theta"] == 0).all()
    with pytest.raises(ValueError, match="rope_fraction"):
        rope_pairs(8, 1.5)


def test_A_activations():
    v = torch.tensor([-3.0, -1.0, 0.0, 2.0, 1e4], dtype=torch.float64, requires_grad=True)
    f = A_ACTIVATIONS["heavy_tail"](v)
    assert torch.allclose(f, torch.tensor([0.25, 0.5, 1.0, 3.0, 1e4 + 1], dtype=torch.float64))
    f.sum().backward()
    assert torch.isfinite(v.grad).all()  # no inf from the branch that is not taken
    assert torch.allclose(v.grad, torch.tensor([1 / 16, 0.25, 1.0, 1.0, 1.0], dtype=torch.float64))


def test_mimo_rank_one_with_unit_weights_is_siso():
    siso = block()
    mimo = Mamba3(16, d_state=8, headdim=8, chunk_size=5, mimo_rank=1).double()
    state = {k: v for k, v in siso.state_dict().items()}
    state.update(mimo_x=torch.ones_like(mimo.mimo_x), mimo_z=torch.ones_like(mimo.mimo_z),
                 mimo_o=torch.ones_like(mimo.mimo_o))
    mimo.load_state_dict(state)
    u = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        assert rel_error(mimo(u), siso(u)) < 1e-12


def test_initialisation_follows_mamba_ssm():
    m = Mamba3(32, d_state=16, headdim=8, mimo_rank=4, dt_min=1e-3, dt_max=1e-1)
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 1e-1 * 1.001)).all()
    assert (m.B_bias == 1).all() and (m.C_bias == 1).all() and (m.D == 1).all()
    assert torch.allclose(m.mimo_x, torch.full_like(m.mimo_x, 0.25)) and (m.mimo_z == 1).all()
    assert torch.allclose(m.mimo_o, torch.full_like(m.mimo_o, 0.25))
    for p in (m.dt_bias, m.D, m.B_bias, m.C_bias, m.mimo_x, m.mimo_z, m.mimo_o):
        assert getattr(p, "_no_weight_decay", False)
    sizes = dict(zip(["z", "x", "B", "C", "dt", "A", "trap", "angle"], m.sizes))
    assert sizes == dict(z=64, x=64, B=64, C=64, dt=8, A=8, trap=8, angle=4)  # no conv anywhere
    assert not any(isinstance(mod, torch.nn.Conv1d) for mod in m.modules())


def test_block_is_causal():
    m = block(mimo_rank=2)
    u = torch.randn(1, 12, 16, dtype=torch.float64)
    v = u.clone()
    v[:, 7:] = torch.randn(1, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        assert rel_error(m(v)[:, :7], m(u)[:, :7]) < 1e-14


@pytest.mark.parametrize("mimo_rank", [None, 2])
def test_gradcheck_through_the_block(mimo_rank):
    m = block(mimo_rank=mimo_rank, d_model=4, d_state=4, headdim=4, expand=2, chunk_size=3)
    u = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: m(v), (u,))
    m(u).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("kw,message", [
    (dict(headdim=6), "headdim"), (dict(ngroups=3), "ngroups"), (dict(d_state=7), "even"),
    (dict(mimo_rank=0), "mimo_rank"), (dict(mimo_rank=True), "mimo_rank"),
    (dict(A_activation="relu"), "A_activation"), (dict(rope_fraction=-0.1), "rope_fraction"),
])
def test_bad_configuration(kw, message):
    cfg = dict(d_model=16, d_state=8, headdim=8)
    cfg.update(kw)
    with pytest.raises(ValueError, match=message):
        Mamba3(**cfg)


def test_bad_input_names_the_argument():
    m = block()
    with pytest.raises(ValueError, match=r"Mamba3: u must have shape \(batch, L, 16\)"):
        m(torch.randn(2, 5, 15, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"Mamba3.step: u must have shape \(batch, 16\)"):
        m.step(torch.randn(2, 5, 16, dtype=torch.float64), m.allocate_cache(2))


def test_block_protocol_in_a_sequence_model():
    torch.manual_seed(0)
    model = SequenceModel(7, 16, 2, mamba3_block(d_state=8, headdim=8, chunk_size=4, mimo_rank=2)).double()
    prompt = torch.randint(0, 7, (2, 5))
    a = generate(model, prompt, 6, temperature=0, recurrent=True)
    b = generate(model, prompt, 6, temperature=0, recurrent=False)
    assert torch.equal(a, b)
    with torch.no_grad():
        caches = model.allocate_cache(2)
        logits = torch.stack([model.step(prompt[:, t], caches) for t in range(5)], dim=1)
        assert rel_error(logits, model(prompt)) < 1e-12


def test_decode_cost():
    siso, mimo = mamba3_decode_cost(64, 128), mamba3_decode_cost(64, 128, R=4)
    assert siso["flops"] == 7 * 64 * 128 and mimo["flops"] == 25 * 64 * 128
    assert siso["state_bytes"] == mimo["state_bytes"] == 2 * 64 * 128 * 4  # the state does not grow with R
    assert siso["bytes"] == 2 * 64 * 128 * 4 + (2 * 64 + 2 * 128 + 2 * (128 + 64)) * 2
    assert 3 < mimo["intensity"] / siso["intensity"] < 4


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
def test_gpu_block_bf16_decoding_matches_forward():
    m = block(torch.float32, d_model=64, headdim=16, d_state=32, chunk_size=16).cuda().to(torch.bfloat16)
    u = torch.randn(2, 40, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ref = m(u)
    out, _ = decode(m, u)
    assert rel_error(out.float(), ref.float()) < 5e-2


# ---------------------------------------------------------------------- the state-tracking tasks


def test_modular_counting_layout_and_targets():
    x, y = modular_counting(64, L=17, modulus=3, gen=1)
    assert x.shape == y.shape == (64, 18) and x.dtype == y.dtype == torch.int64
    assert (x[:, 0] == 3).all() and ((x[:, 1:] == 0) | (x[:, 1:] == 1)).all()
    assert (y[:, 0] == IGNORE_INDEX).all()
    for i in range(3):  # the count, recomputed one row at a time
        count = 0
        for t in range(1, 18):
            count += int(x[i, t])
            assert y[i, t] == count % 3
    assert set(y[:, 1:].unique().tolist()) == {0, 1, 2}
    x2, y2 = modular_counting(64, L=17, modulus=3, gen=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # the seed fixes the data
    x5, _ = modular_counting(4, L=3, modulus=5, vocab=8, gen=0)
    assert (x5[:, 0] == 7).all()


def test_parity_is_modular_counting_mod_2():
    x, y = parity(32, L=9, gen=3)
    x2, y2 = modular_counting(32, L=9, modulus=2, gen=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (32, 10) and (x[:, 0] == 2).all()
    assert torch.equal(y[:, 1:], torch.cumsum(x[:, 1:], 1) % 2)
    assert TASKS["parity"] is parity and TASKS["modular_counting"] is modular_counting


@pytest.mark.parametrize("kw,message", [
    (dict(L=0), "L"), (dict(modulus=1), "modulus"), (dict(modulus=4, vocab=4), "vocab"), (dict(gen=1.5), "gen"),
])
def test_tasks_bad_input(kw, message):
    with pytest.raises(ValueError, match=message):
        modular_counting(2, **kw)
    with pytest.raises(ValueError, match="vocab"):
        parity(2, vocab=2)


@pytest.mark.parametrize("modulus", [2, 3, 5])
def test_a_rotation_counts_exactly_at_any_length(modulus):
    x, y = modular_counting(8, L=2000, modulus=modulus, gen=modulus)
    pred = rotation_counter(x, modulus)
    assert torch.equal(pred[:, 1:], y[:, 1:])


def test_rotation_readout_sign_is_parity():
    bits = torch.randint(0, 2, (50,), generator=torch.Generator().manual_seed(0))
    y, phi = rotation_readout(bits, math.pi, 1.0)
    assert torch.equal((y < 0).long(), torch.cumsum(bits, 0) % 2)
    assert torch.allclose(phi, math.pi * torch.cumsum(bits, 0).double())


def test_trapezoid_error_orders():
    dts = [0.1, 0.05]
    euler, trap = trapezoid_error(1.0, dts), trapezoid_error(0.5, dts)
    assert 1.8 < euler[0] / euler[1] < 2.2  # first order
    assert 3.6 < trap[0] / trap[1] < 4.4  # second order
    assert trap[1] < euler[1] / 50
