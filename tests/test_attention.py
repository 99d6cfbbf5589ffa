"""ssm_edu.attention: causal attention with rotary positions and a KV cache, as lm.py blocks."""

import math

import pytest
import torch

from ssm_edu.attention import (MLP, CausalSelfAttention, TransformerBlock, alternate, attention_block, kv_cache_bytes,
                               mlp_block, rope, transformer_block)
from ssm_edu.lm import SequenceModel, generate
from ssm_edu.numerics import rel_error


def naive_attention(block: CausalSelfAttention, u):
    """The specification, written out: softmax(q kᵀ/√P + mask) v per head, positions by explicit rotation matrices."""
    b, L, _ = u.shape
    H, P = block.n_heads, block.head_dim
    q, k, v = block.qkv_proj(u).view(b, L, 3, H, P).unbind(2)  # (b, L, H, P)
    theta = block.rope_base ** (-torch.arange(P // 2, dtype=u.dtype) * 2 / P)
    out = torch.zeros(b, L, H, P, dtype=u.dtype)
    for t in range(L):
        R = torch.zeros(L, P, P, dtype=u.dtype)  # R[s] rotates pair (i, i + P/2) by s·θ_i
        for s in range(L):
            for i in range(P // 2):
                c, sn = math.cos(s * theta[i]), math.sin(s * theta[i])
                R[s, i, i], R[s, i, i + P // 2], R[s, i + P // 2, i], R[s, i + P // 2, i + P // 2] = c, -sn, sn, c
        qt = torch.einsum("ij,bhj->bhi", R[t], q[:, t])  # (b, H, P)
        ks = torch.einsum("sij,bshj->bshi", R[: t + 1], k[:, : t + 1])  # (b, t+1, H, P)
        w = torch.softmax(torch.einsum("bhp,bshp->bhs", qt, ks) / math.sqrt(P), dim=-1)
        out[:, t] = torch.einsum("bhs,bshp->bhp", w, v[:, : t + 1])
    return block.out_proj(out.reshape(b, L, H * P))


@pytest.mark.parametrize("L", [1, 5])
def test_forward_matches_the_written_out_attention(L):
    torch.manual_seed(0)
    block = CausalSelfAttention(12, n_heads=3).double()
    u = torch.randn(2, L, 12, dtype=torch.float64)
    assert rel_error(block(u), naive_attention(block, u)) < 1e-12


def test_rope_is_relative_and_norm_preserving():
    torch.manual_seed(0)
    q, k = torch.randn(1, 8, dtype=torch.float64), torch.randn(1, 8, dtype=torch.float64)
    dots = [(rope(q, torch.tensor([t])) * rope(k, torch.tensor([t - 3]))).sum() for t in (3, 7, 50)]
    assert max(abs(d - dots[0]) for d in dots) < 1e-12
    x = torch.randn(4, 6, 8, dtype=torch.float64)
    assert rel_error(rope(x, torch.arange(6)).norm(dim=-1), x.norm(dim=-1)) < 1e-12
    with pytest.raises(ValueError, match="even"):
        rope(torch.randn(3, 5), torch.arange(3))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("make", [lambda: CausalSelfAttention(16, n_heads=2), lambda: TransformerBlock(16, n_heads=4)])
def test_step_reproduces_forward_and_the_cache_grows(make, dtype, tol):
    torch.manual_seed(0)
    block = make().to(dtype)
    b, L = 3, 11
    u = torch.randn(b, L, 16, dtype=dtype)
    cache = block.allocate_cache(b, capacity=2)  # forces several doublings
    ys = []
    for t in range(L):
        ys.append(block.step(u[:, t], cache))
        assert cache["length"] == t + 1 and cache["k"].shape[2] >= t + 1
        assert kv_cache_bytes(cache) == 2 * b * 16 * (t + 1) * u.element_size()  # 2·b·H·P·t·bytes, H·P = 16
    assert rel_error(torch.stack(ys, 1), block(u)) < tol


@pytest.mark.parametrize("sizes", [(6, 3), (1, 1, 4, 3), (9,)])
def test_extend_chunk_by_chunk_reproduces_forward(sizes):
    """Prefill (the first chunk, on a fresh cache), then further chunks or single steps: forward on the whole."""
    torch.manual_seed(0)
    block = TransformerBlock(16, n_heads=2).double()
    u = torch.randn(2, sum(sizes), 16, dtype=torch.float64)
    cache = block.allocate_cache(2, capacity=4)
    ys, s = [], 0
    for i, l in enumerate(sizes):
        ys.append(block.extend(u[:, s:s + l], cache) if i % 2 == 0 else
                  torch.stack([block.step(u[:, t], cache) for t in range(s, s + l)], 1))
        s += l
    assert cache["length"] == s
    assert rel_error(torch.cat(ys, 1), block(u)) < 1e-12


def test_transformer_generates_the_same_through_the_cache():
    torch.manual_seed(0)
    model = SequenceModel(13, 16, 2, transformer_block(n_heads=2)).double()
    prompt = torch.randint(0, 13, (2, 4))
    assert torch.equal(generate(model, prompt, 8, temperature=0), generate(model, prompt, 8, temperature=0, recurrent=False))
    # out_proj of both the attention and the MLP are scaled down by sqrt(n_layers) at initialisation
    assert all(hasattr(m, "out_proj") for m in (model.blocks[0].attn, model.blocks[0].mlp))


def test_forward_is_causal():
    torch.manual_seed(0)
    block = TransformerBlock(8, n_heads=2).double()
    u = torch.randn(1, 7, 8, dtype=torch.float64)
    u2 = u.clone()
    u2[:, 4:] += 1
    y, y2 = block(u), block(u2)
    assert rel_error(y2[:, :4], y[:, :4]) < 1e-12 and rel_error(y2[:, 4:], y[:, 4:]) > 1e-3


def test_alternate_cycles_factories():
    model = SequenceModel(7, 8, 4, alternate(attention_block(n_heads=2), mlp_block(expand=2)))
    assert [type(b) for b in model.blocks] == [CausalSelfAttention, MLP, CausalSelfAttention, MLP]
    torch.manual_seed(0)
    model = model.double()
    prompt = torch.randint(0, 7, (1, 3))
    assert torch.equal(generate(model, prompt, 5, temperature=0), generate(model, prompt, 5, temperature=0, recurrent=False))
    with pytest.raises(ValueError):
        alternate()


def test_gradcheck():
    torch.manual_seed(0)
    block = CausalSelfAttention(4, n_heads=1).double()
    u = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (u,))


def test_bad_input():
    block = CausalSelfAttention(8, n_heads=2)
    with pytest.raises(ValueError, match="u"):
        block(torch.randn(2, 5, 6))
    cache = block.allocate_cache(2)
    with pytest.raises(ValueError, match="u_t"):
        block.step(torch.randn(3, 8), cache)
    with pytest.raises(ValueError, match="head_dim"):
        CausalSelfAttention(6, n_heads=2)  # head_dim 3 is odd
