"""The blocks' fused decoding steps: kernels/mamba2_block_step.py and kernels/mamba3_block_step.py.

Each replaces everything between a block's two projections (``step(..., fused=True)``, or the block's
``fused_step``). Checked against the block's PyTorch step, token after token, float32: the outputs and
every tensor of the cache, updated in place at the same addresses (what a CUDA graph of the step needs).
On a CPU the kernels run in Triton's interpreter; on a GPU also with bfloat16 weights, and inside a
graphed ``Decoder``.
"""

import pytest
import torch

import ssm_edu
from ssm_edu.lm import SequenceModel
from ssm_edu.mamba2 import Mamba2, mamba2_block
from ssm_edu.mamba3_block import Mamba3, mamba3_block
from ssm_edu.numerics import rel_error, tolerance

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"

CASES = [
    (Mamba2, dict(d_model=24, d_state=8, headdim=8)),
    (Mamba2, dict(d_model=24, d_state=6, headdim=6, ngroups=2, d_conv=3)),  # N, P not powers of two, W = 3
    (Mamba3, dict(d_model=24, d_state=8, headdim=8)),  # heavy-tailed A, half the pairs rotate
    (Mamba3, dict(d_model=24, d_state=8, headdim=8, A_activation="softplus", rope_fraction=1.0, ngroups=3)),
    (Mamba3, dict(d_model=24, d_state=12, headdim=6, rope_fraction=0.0)),  # N/2 = 6, P = 6
]
ids = [f"{cls.__name__}-" + ",".join(f"{a}={v}" for a, v in kw.items()) for cls, kw in CASES]


def perturbed(m, gen):
    """Parameters moved off their initial values (norm weights, biases, D all leave 1)."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
    return m


def takes(m, u, cache) -> bool:
    """Whether ``m.step(u, cache, fused=True)`` runs the block's fused kernel (else it takes the PyTorch step)."""
    from ssm_edu.kernels import mamba2_block_step, mamba3_block_step

    with torch.no_grad():
        proj = m.in_proj(u)
    if isinstance(m, Mamba2):
        return mamba2_block_step.supported(m, proj, cache)
    return mamba3_block_step.supported(m, proj, cache["state"])


def tensors(cache):
    """Every tensor of a block's cache, in a fixed order."""
    out = []
    for v in cache.values():
        out += list(v) if isinstance(v, tuple) else [v]
    return out


@pytest.mark.parametrize("cls, kw", CASES, ids=ids)
def test_fused_step_matches_the_pytorch_step(cls, kw):
    gen = torch.Generator().manual_seed(0)
    m = perturbed(cls(**kw), gen).to(DEVICE)
    ref_cache, cache = m.allocate_cache(3), m.allocate_cache(3)
    addresses = [t.data_ptr() for t in tensors(cache)]
    for _ in range(6):
        u = torch.randn(3, kw["d_model"], generator=gen).to(DEVICE)
        assert takes(m, u, cache)  # the kernel runs: not the PyTorch step checked against itself
        with torch.no_grad():
            ref = m.step(u, ref_cache, fused=False)
            out = m.step(u, cache, fused=True)
        assert rel_error(out, ref) < tolerance(torch.float32)
        for i, (a, b) in enumerate(zip(tensors(cache), tensors(ref_cache))):
            assert rel_error(a, b) < tolerance(torch.float32), f"cache tensor {i}"
    assert [t.data_ptr() for t in tensors(cache)] == addresses


def test_off_by_default_and_what_the_kernels_do_not_take():
    """fused_step is off; a MIMO Mamba-3 block and a float64 Mamba-2 cache take the PyTorch step."""
    gen = torch.Generator().manual_seed(1)
    assert Mamba2.fused_step is False and Mamba3.fused_step is False
    m = perturbed(Mamba3(d_model=16, d_state=4, headdim=8, mimo_rank=2), gen)
    c1, c2 = m.allocate_cache(2), m.allocate_cache(2)
    u = torch.randn(2, 16, generator=gen)
    with torch.no_grad():
        assert torch.equal(m.step(u, c1, fused=True), m.step(u, c2, fused=False))
    m = perturbed(Mamba2(d_model=16, d_state=4, headdim=8), gen).double()
    c1, c2 = m.allocate_cache(2), m.allocate_cache(2)
    with torch.no_grad():
        assert torch.equal(m.step(u.double(), c1, fused=True), m.step(u.double(), c2, fused=False))


@pytest.mark.parametrize("cls", [Mamba2, Mamba3])
def test_compiled_kernels_take_gpu_tensors_only(cls, monkeypatch):
    """Compiled Triton (a GPU machine, interpreter off) reads CUDA memory only: a block on the CPU there takes
    the PyTorch step instead of handing CPU tensors to the kernel."""
    from ssm_edu.kernels import mamba2_block_step, mamba3_block_step

    m = cls(d_model=16, d_state=8, headdim=8)
    cache, u = m.allocate_cache(2), torch.randn(2, 16)
    for module in (mamba2_block_step, mamba3_block_step):
        monkeypatch.setattr(module, "interpreting", lambda: False)
    assert not takes(m, u, cache)
    monkeypatch.undo()
    assert takes(m, u, cache) == (not torch.cuda.is_available())  # in the interpreter on a CPU machine


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("cls, factory", [(Mamba2, mamba2_block), (Mamba3, mamba3_block)], ids=["Mamba2", "Mamba3"])
def test_gpu_bf16_and_in_a_cuda_graph(cls, factory):
    """bf16 weights: the fused step (float32 inside) against the PyTorch step; and a graphed Decoder of a model
    of fused blocks generates what its eager steps generate."""
    from ssm_edu.inference import Decoder

    gen = torch.Generator().manual_seed(2)
    m = perturbed(cls(d_model=128, d_state=64, headdim=64), gen).cuda().to(torch.bfloat16)
    c1, c2 = m.allocate_cache(4), m.allocate_cache(4)
    for _ in range(8):
        u = torch.randn(4, 128, generator=gen).cuda().to(torch.bfloat16)
        with torch.no_grad():
            ref, out = m.step(u, c1, fused=False), m.step(u, c2, fused=True)
        assert rel_error(out.float(), ref.float()) < tolerance(torch.bfloat16)
    torch.manual_seed(0)
    model = SequenceModel(64, 128, 2, factory(d_state=64, headdim=64)).cuda().to(torch.bfloat16).eval()
    for blk in model.modules():
        if isinstance(blk, cls):
            blk.fused_step = True
    dec = Decoder(model, capacity=64, graph=True)
    prompt = torch.randint(0, 64, (1, 8), device="cuda")
    graphed = dec.generate(prompt, 12, seed=0)
    dec.use_graph = False
    assert torch.equal(dec.generate(prompt, 12, seed=0), graphed)
