"""ssm_edu.inference: cache bytes, prefill/streaming through extend, Mamba-1's scan from a state, profiles."""

import pytest
import torch
import torch.nn as nn

from ssm_edu.attention import CausalSelfAttention, transformer_block
from ssm_edu.deltanet import DeltaNet
from ssm_edu.inference import (cache_nbytes, decode_profile, extend, extend_block, filled_caches, generate_with_prefill,
                               layer_cache_bytes, long_context_profile, matched_models, model_cache_bytes, prefill,
                               selective_scan_from)
from ssm_edu.lm import SequenceModel, generate, s4d_block
from ssm_edu.mamba import Mamba
from ssm_edu.mamba2 import Mamba2
from ssm_edu.mamba3_block import Mamba3
from ssm_edu.numerics import rel_error
from ssm_edu.selective import selective_scan, selective_state_update

BLOCKS = {
    "attention": lambda d: CausalSelfAttention(d, n_heads=2),
    "transformer": transformer_block(n_heads=4),
    "mamba": lambda d: Mamba(d, d_state=4, scan_impl="vectorized", step_impl="vectorized"),
    "mamba2": lambda d: Mamba2(d, d_state=8, headdim=8, chunk_size=4, impl="vectorized"),
    "mamba3": lambda d: Mamba3(d, d_state=8, headdim=8, chunk_size=4, impl="vectorized"),
    "mamba3_mimo": lambda d: Mamba3(d, d_state=8, headdim=8, chunk_size=4, mimo_rank=2, impl="vectorized"),
    "deltanet": lambda d: DeltaNet(d, n_heads=2, head_k_dim=4, head_v_dim=8, chunk_size=4),
}


class Ema(nn.Module):
    """A block with step but no parallel form with a carried state: extend falls back to the step."""

    def __init__(self, d):
        super().__init__()
        self.a = nn.Parameter(torch.rand(d))

    def forward(self, x):
        h, out = torch.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):
            h = self.a * h + x[:, t]
            out.append(h)
        return torch.stack(out, 1)

    def allocate_cache(self, batch, device=None, dtype=None):
        return {"h": torch.zeros(batch, self.a.shape[0], device=device, dtype=dtype)}

    def step(self, x, cache):
        cache["h"].mul_(self.a).add_(x)
        return cache["h"].clone()


def _model(name, dtype=torch.float64, layers=2):
    torch.manual_seed(0)
    factory = Ema if name == "ema" else BLOCKS[name]
    return SequenceModel(17, 16, layers, factory).to(dtype).eval()


@pytest.mark.parametrize("name", sorted(BLOCKS) + ["ema"])
@pytest.mark.parametrize("sizes", [(1, 2, 1, 6, 3), (13,), (3, 10)])
def test_extend_chunk_by_chunk_equals_the_whole_sequence(name, sizes):
    """Streaming: chunks of any size (shorter than the conv, length 1, longer than a chunk of SSD) = forward."""
    model = _model(name)
    x = torch.randint(0, 17, (2, sum(sizes)))
    caches = model.allocate_cache(2)
    outs, s = [], 0
    for l in sizes:
        outs.append(extend(model, x[:, s:s + l], caches))
        s += l
    assert rel_error(torch.cat(outs, 1), model(x)) < 1e-12


@pytest.mark.heavy  # up to 76 s in the GPU test phase of 2026-12-07: started first there
@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("T", [1, 7])
def test_prefill_then_step_continues_exactly(name, T):
    model = _model(name)
    x = torch.randint(0, 17, (3, T + 5))
    logits, caches = prefill(model, x[:, :T])
    after = torch.stack([model.step(x[:, t], caches) for t in range(T, T + 5)], 1)
    assert rel_error(torch.cat([logits, after], 1), model(x)) < 1e-12
    prompt = x[:, :T]
    assert torch.equal(generate_with_prefill(model, prompt, 6), generate(model, prompt, 6, temperature=0, recurrent=False))


@pytest.mark.parametrize("name", ["mamba", "mamba2", "attention"])
def test_extend_in_float32(name):
    model = _model(name, torch.float32)
    x = torch.randint(0, 17, (2, 12))
    caches = model.allocate_cache(2)
    out = torch.cat([extend(model, x[:, :5], caches), extend(model, x[:, 5:], caches)], 1)
    assert rel_error(out, model(x)) < 1e-5


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cache_bytes_formula_matches_the_tensors(name, dtype):
    model = _model(name, dtype)
    T = 9
    _, caches = prefill(model, torch.randint(0, 17, (2, T)))
    for block, cache in zip(model.blocks, caches):
        assert layer_cache_bytes(block, T, batch=2, dtype=dtype) == cache_nbytes(cache)
    assert model_cache_bytes(model, T, batch=2) == cache_nbytes(caches)
    grows = name in ("attention", "transformer")
    assert (model_cache_bytes(model, 2 * T, batch=2) == 2 * cache_nbytes(caches)) == grows
    assert (model_cache_bytes(model, 2 * T, batch=2) == cache_nbytes(caches)) == (not grows)
    filled = filled_caches(model, 50, batch=2)
    assert cache_nbytes(filled) == model_cache_bytes(model, 50, batch=2)


def test_cache_bytes_by_hand():
    """The docstring's table for one configuration each."""
    assert layer_cache_bytes(CausalSelfAttention(64, n_heads=4), 1000, dtype=torch.bfloat16) == 2 * 64 * 1000 * 2
    m = Mamba(64, d_state=16)  # E D = 128 channels, W = 4
    assert layer_cache_bytes(m, 10 ** 6, dtype=torch.bfloat16) == 128 * 4 * 2 + 128 * 16 * 4
    m2 = Mamba2(64, d_state=32, headdim=16)  # H P = 128, conv over 128 + 2·32
    assert layer_cache_bytes(m2, 7, batch=3) == 3 * (192 * 4 * 4 + 128 * 32 * 4)
    with pytest.raises(TypeError, match="Linear"):
        layer_cache_bytes(nn.Linear(3, 3), 5)


@pytest.mark.parametrize("grouped", [False, True])
def test_selective_scan_from_carries_the_state(grouped):
    torch.manual_seed(0)
    b, D, N, L = 2, 6, 4, 11
    f64 = dict(dtype=torch.float64)
    u, delta, z = torch.randn(b, D, L, **f64), torch.randn(b, D, L, **f64), torch.randn(b, D, L, **f64)
    A = -torch.rand(D, N, **f64) - 0.1
    B, C = (torch.randn(b, 3, N, L, **f64) for _ in range(2)) if grouped else (torch.randn(b, N, L, **f64) for _ in range(2))
    Dskip, bias = torch.randn(D, **f64), torch.randn(D, **f64)
    kw = dict(D=Dskip, z=z, delta_bias=bias, delta_softplus=True)
    y_all, h_all = selective_scan(u, delta, A, B, C, **kw, return_last_state=True, impl="naive")
    ys, h = [], None
    for s, e in ((0, 1), (1, 5), (5, 11)):
        y, h = selective_scan_from(u[..., s:e], delta[..., s:e], A, B[..., s:e], C[..., s:e], Dskip, z[..., s:e], bias,
                                   True, initial_state=h, impl="vectorized")
        ys.append(y)
    assert rel_error(torch.cat(ys, -1), y_all) < 1e-12 and rel_error(h, h_all) < 1e-12
    # the decoding step, token by token, agrees with the scan's final state
    state = torch.zeros(b, D, N, **f64)
    Bt, Ct = (X.permute(0, 3, 1, 2) if grouped else X.permute(0, 2, 1) for X in (B, C))  # (b, L, [G,] N)
    for t in range(L):
        selective_state_update(state, u[..., t], delta[..., t], A, Bt[:, t], Ct[:, t], D=Dskip, z=z[..., t],
                               dt_bias=bias, dt_softplus=True, impl="vectorized")
    assert rel_error(state, h_all) < 1e-12
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan_from(u, delta, A, B, C, initial_state=torch.zeros(b, D, N + 1, **f64))


def test_extend_needs_a_state():
    model = SequenceModel(11, 8, 1, lambda d: s4d_block(d, d_state=4))
    with pytest.raises(NotImplementedError):
        extend_block(model.blocks[0], torch.randn(1, 3, 8), {})
    model = _model("mamba")
    with pytest.raises(ValueError, match="idx"):
        extend(model, torch.randint(0, 17, (5,)), model.allocate_cache(1))


def test_decode_profile_and_long_context_rows():
    models = matched_models(20, 16, 1, which=("Transformer", "Mamba-2"), impl="vectorized")
    rows = decode_profile(models, [4, 64], n_tokens=2, warmup=1)
    by = {(r["model"], r["context"]): r for r in rows}
    assert by[("Transformer", 64)]["cache_bytes"] == 16 * by[("Transformer", 4)]["cache_bytes"]
    assert by[("Mamba-2", 64)]["cache_bytes"] == by[("Mamba-2", 4)]["cache_bytes"]
    assert all(r["s_per_token"] > 0 and r["peak_bytes"] >= r["cache_bytes"] for r in rows)
    rows = long_context_profile([8, 32], d=8, n=4, heads=2, headdim=4, d_state=4)
    assert {r["shape"] for r in rows} >= {"B1 D8 L32 N4", "B1 L32 H2 P4 N4 G1", "B1 H2 L32 P4"}
    assert all(r["median_us"] > 0 for r in rows)


def test_decode_benchmark_rows_on_cpu():
    """benchmarks/decode.py's rows, with a CPU stand-in for the GPU context (tiny sizes): eager rows measured,
    graph rows say why not (no CUDA device), a shape that does not fit says so, nothing crashes."""
    import warnings

    from benchmarks.decode import IMPL, decode_rows

    class CpuContext:
        device = torch.device("cpu")
        hbm_bytes_s = 1e11

        def wants(self, shape):
            return "B1" in shape or "ctx64" in shape

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = list(decode_rows(CpuContext(), d_model=32, n_layers=1, batches=(1, 2), ssm_context=16,
                                contexts=(16, 64), dtype=torch.float32, n_tokens=2, repeats=1, peer=False))
    eager = {(r["impl"], r["shape"]): r for r in rows if r["impl"].endswith("eager")}
    assert {i.split("-")[0] for i, _ in eager} == set(IMPL.values())
    assert all(r["median_us"] > 0 and "missing" not in r and r["tokens_per_s"] > 0 for r in eager.values())
    graph = [r for r in rows if r["impl"].endswith("graph")]
    assert len(graph) == len(eager) and all("CUDA" in r["missing"] for r in graph)  # no graph on a CPU
    fused = [r for r in rows if r["impl"].endswith("eager-fused")]  # the fused steps, in the interpreter here
    assert sorted({r["impl"] for r in fused}) == ["mamba2-eager-fused", "mamba3-eager-fused"]
    assert all(r["median_us"] > 0 for r in fused)
    kv = eager[("transformer-eager", "B1 ctx64 d32 layers1")]
    assert kv["cache_mib"] * 2**20 == 2 * 32 * 64 * 4  # keys and values, H·P = d, float32
    assert eager[("transformer-eager", "B2 ctx64 d32 layers1")]["cache_mib"] == 2 * kv["cache_mib"]
    m2 = eager[("mamba2-eager", "B1 ctx16 d32 layers2")]
    model = matched_models(256, 32, 1, which=("Mamba-2",))["Mamba-2"]
    from ssm_edu.inference import decode_floor_bytes
    assert m2["floor_us"] == pytest.approx(1e6 * decode_floor_bytes(model, 16) / 1e11)

    class TinyGpu(CpuContext):  # free memory is what a GPU has; here: a shape that cannot fit is reported
        def wants(self, shape):
            return shape == "B2 ctx64 d32 layers1"

    import benchmarks.decode as bd

    free, bd._free_bytes = bd._free_bytes, lambda device: 1000.0
    try:
        rows = list(decode_rows(TinyGpu(), d_model=32, n_layers=1, batches=(2,), contexts=(64,), which=("Transformer",),
                                dtype=torch.float32, n_tokens=2, repeats=1))
    finally:
        bd._free_bytes = free
    assert [r["impl"] for r in rows] == ["transformer-eager", "transformer-graph"]
    assert all("GiB free" in r["missing"] for r in rows)


def test_decode_benchmark_survives_a_failing_shape(monkeypatch):
    """An error while timing one model is a row that says why; the next model is still measured."""
    import warnings

    import benchmarks.decode as bd

    class CpuContext:
        device = torch.device("cpu")
        hbm_bytes_s = 1e11

        def wants(self, shape):
            return True

    real = bd.time_decoder

    def flaky(dec, *args, **kwargs):
        if any(isinstance(b, Mamba3) for b in dec.model.blocks):
            raise RuntimeError("boom")
        return real(dec, *args, **kwargs)

    monkeypatch.setattr(bd, "time_decoder", flaky)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = list(bd.decode_rows(CpuContext(), d_model=16, n_layers=1, batches=(1,), ssm_context=8,
                                   which=("Mamba-3", "Mamba-2"), dtype=torch.float32, n_tokens=1, repeats=1,
                                   peer=False))
    by = {r["impl"]: r for r in rows}
    assert by["mamba3-eager"]["missing"] == "RuntimeError: boom" and by["mamba2-eager"]["median_us"] > 0


def test_cache_numbers_count_every_cache_tensor():
    """hybrid.cache_numbers walks nested caches (Mamba-3's is a Mamba3State tuple): numbers = bytes / 4 in float32."""
    from ssm_edu.hybrid import cache_numbers

    models = matched_models(20, 16, 1, which=("Mamba-3", "Mamba-2", "DeltaNet", "Hybrid"))
    for m in models.values():
        assert cache_numbers(m, 10) == [layer_cache_bytes(b, 10) // 4 for b in m.blocks]


def test_stored_decode_rows_keep_fused_steps_apart(monkeypatch):
    """Rows of the blocks' fused steps ("mamba3-graph-fused") are neither peers nor the PyTorch step's rows:
    left out unless asked for, then marked, and the table gives them a line of their own."""
    import ssm_edu.results
    from ssm_edu.inference import gpu_decode_rows, gpu_decode_table

    base = {"op": "decode", "pass": "fwd", "shape": "B1 ctx1024 d768 layers24", "dtype": "bf16", "device": "GPU",
            "floor_us": 50.0}
    stored = [base | {"impl": "mamba3-eager", "median_us": 9000.0, "kernels_per_step": 1200},
              base | {"impl": "mamba3-graph", "median_us": 1800.0},
              base | {"impl": "mamba3-eager-fused", "median_us": 3000.0, "kernels_per_step": 130},
              base | {"impl": "mamba3-graph-fused", "median_us": 300.0},
              base | {"impl": "mamba2-graph-mamba_ssm", "median_us": 1200.0}]
    monkeypatch.setattr(ssm_edu.results, "rows", lambda op=None, *a, **k: [r for r in stored if r["op"] == op])
    plain = gpu_decode_rows()
    assert len(plain) == 3 and not any(r["fused"] for r in plain)
    assert [r["peer"] for r in plain] == [None, None, "mamba_ssm"]
    rows = gpu_decode_rows(include_fused=True)
    fused = [r for r in rows if r["fused"]]
    assert [(r["mode"], r["peer"]) for r in fused] == [("eager", None), ("graph", None)]
    table = gpu_decode_table(rows)
    line = next(x for x in table.splitlines() if x.strip().startswith("fused step"))
    assert "6.0x" in line and "130" in line  # 300 µs over a 50 µs floor; the fused step's kernels
    assert "1,200" in next(x for x in table.splitlines() if x.startswith("Mamba-3"))
    assert "fused step" not in gpu_decode_table(plain)
