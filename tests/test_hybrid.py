"""ssm_edu.hybrid (chapter 11): layer patterns, hybrid models of SSM and attention layers, decoding, cache sizes."""

import pytest
import torch

from ssm_edu.attention import CausalSelfAttention, attention_block, transformer_block
from ssm_edu.deltanet import DeltaNet, deltanet_block
from ssm_edu.hybrid import cache_numbers, hybrid_block, hybrid_model, layer_pattern
from ssm_edu.lm import SequenceModel, generate, s4d_block
from ssm_edu.mamba2 import Mamba2, mamba2_block
from ssm_edu.numerics import rel_error

M2 = mamba2_block(d_state=4, headdim=8, chunk_size=4, impl="vectorized")
DN = deltanet_block(n_heads=2, head_k_dim=4, head_v_dim=8, chunk_size=4)
AT = attention_block(n_heads=2)


@pytest.mark.parametrize("n,every,offset,expected", [
    (8, 8, None, "MMMMAMMM"),  # Jamba: one in eight, at position 4
    (16, 8, None, "MMMMAMMMMMMMAMMM"),
    (4, 2, None, "MAMA"),
    (4, 2, 0, "AMAM"),
    (3, None, None, "MMM"),
    (3, 1, None, "AAA"),
    (2, 2, None, "MA"),
    (5, 4, 3, "MMMAM"),
])
def test_layer_pattern(n, every, offset, expected):
    assert layer_pattern(n, every, offset) == expected


def test_layer_pattern_letters_and_bad_input():
    assert layer_pattern(4, 2, ssm="D", attention="T") == "DTDT"
    for args in [(0, 2), (4, -1), (4, 2, 2), (4, 2, -1), (2.0, 2)]:
        with pytest.raises(ValueError):
            layer_pattern(*args)


def test_hybrid_model_lays_out_the_pattern():
    torch.manual_seed(0)
    model = hybrid_model(13, 16, "MDAM", M=M2, D=DN, A=AT)
    kinds = [type(b) for b in model.blocks]
    assert kinds == [Mamba2, DeltaNet, CausalSelfAttention, Mamba2]
    again = SequenceModel(13, 16, 4, hybrid_block("AMMA", M=M2, A=AT))
    assert [type(b) for b in again.blocks] == [CausalSelfAttention, Mamba2, Mamba2, CausalSelfAttention]
    with pytest.raises(ValueError, match="no block factory"):
        hybrid_block("MAX", M=M2, A=AT)
    with pytest.raises(ValueError, match="non-empty"):
        hybrid_block("", M=M2)


@pytest.mark.heavy  # up to 61 s in the GPU test phase of 2026-12-07: started first there
@pytest.mark.parametrize("pattern", ["MA", "AMD", "DAMA"])
def test_hybrid_is_causal_and_decodes_through_every_layer(pattern):
    torch.manual_seed(1)
    model = hybrid_model(11, 16, pattern, M=M2, D=DN, A=AT).double()
    x = torch.randint(0, 11, (2, 9))
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % 11
    with torch.no_grad():
        out, out2 = model(x), model(x2)
        assert rel_error(out2[:, :6], out[:, :6]) < 1e-12 and rel_error(out2[:, 6:], out[:, 6:]) > 1e-6
        caches = model.allocate_cache(2)
        stepped = torch.stack([model.step(x[:, t], caches) for t in range(9)], dim=1)
    assert rel_error(stepped, out) < 1e-12  # the SSM states and the KV caches together reproduce forward
    prompt = x[:, :4]
    assert torch.equal(generate(model, prompt, 5, temperature=0), generate(model, prompt, 5, temperature=0, recurrent=False))


def test_cache_numbers():
    torch.manual_seed(0)
    model = hybrid_model(11, 16, "MAD", M=M2, A=AT, D=DN)
    m2, dn = model.blocks[0], model.blocks[2]
    fixed = [m2.nheads * m2.headdim * m2.d_state + m2.conv_dim * m2.d_conv, None, dn.state_size + dn.conv_dim * dn.d_conv]
    for L in (1, 100, 10_000):
        counts = cache_numbers(model, L)
        assert counts[0] == fixed[0] and counts[2] == fixed[2]  # the SSM layers: the same for every length
        assert counts[1] == 2 * 2 * 8 * L  # attention: every key and value, 2·H·P·L
    tf = SequenceModel(11, 16, 1, transformer_block(n_heads=4))
    assert cache_numbers(tf, 7) == [2 * 16 * 7]
    with pytest.raises(ValueError, match="no decoding cache"):
        cache_numbers(SequenceModel(11, 16, 1, lambda d: s4d_block(d, d_state=4)), 5)
