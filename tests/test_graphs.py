"""ssm_edu.inference.Decoder: the decoding step on static buffers, captured in a CUDA graph where there is one.

On a CPU: the static-buffer step equals the plain ``model.step`` (it is the
same step, run without capture), every block updates its cache in place,
the fallback to eager mode is said once, Gumbel-max sampling draws from the
softmax. On a GPU (skipped elsewhere): graphed and eager generation give the
same tokens for a seed, for every block type, in float32 and bfloat16, and
a step that cannot be captured falls back to eager mode with its reason.
"""

import contextlib
import math
import warnings

import pytest
import torch
import torch.nn as nn

import ssm_edu.inference as inference
from ssm_edu.attention import CausalSelfAttention
from ssm_edu.inference import (MODEL_NAMES, Decoder, decode_floor_bytes, decode_speed, matched_models, sample_gumbel,
                               static_caches, step_profile, time_decoder)
from ssm_edu.lm import SequenceModel, count_parameters, generate
from ssm_edu.mamba3_block import Mamba3
from ssm_edu.numerics import rel_error

CUDA = torch.cuda.is_available()
gpu_only = pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
ALL = MODEL_NAMES + ("Mamba-3 MIMO",)


def _model(name, dtype=torch.float64, device=None, impl="vectorized", d=16, layers=1):
    """Small models of every block type: matched_models' recipes (a Mamba-3 MIMO model besides)."""
    if name == "Mamba-3 MIMO":
        torch.manual_seed(0)
        model = SequenceModel(17, d, 2 * layers, lambda dm: Mamba3(dm, d_state=8, headdim=8, mimo_rank=2, impl=impl))
        return model.to(device=device, dtype=dtype).eval()
    return matched_models(17, d, layers, which=(name,), device=device, dtype=dtype, impl=impl)[name]


@pytest.fixture
def quiet():
    """No fallback warnings (the CPU has no graphs), and a clean record of what was said."""
    inference._SAID.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
    inference._SAID.clear()


# ---------------------------------------------------------------------------- on any device


@pytest.mark.parametrize("name", ALL)
def test_static_buffers_compute_what_the_plain_step_computes(name, quiet):
    """The decoder's step, run without capture: the tokens of lm.generate (greedy), the logits of model.step."""
    model = _model(name)
    prompt = torch.randint(0, 17, (2, 5), generator=torch.Generator().manual_seed(1))
    dec = Decoder(model, batch=2, capacity=16, graph=False)
    out = dec.generate(prompt, 9)
    assert torch.equal(out, generate(model, prompt, 9, temperature=0))
    caches = model.allocate_cache(2)
    with torch.no_grad():
        for t in range(out.shape[1] - 1):
            logits = model.step(out[:, t], caches)
    assert rel_error(dec.logits, logits) < 1e-12
    assert dec.position == out.shape[1] - 1


@pytest.mark.parametrize("name", ALL)
def test_every_block_updates_its_cache_in_place(name, quiet):
    """What a graph replays: the same addresses at every step (a block that replaced a tensor would break it)."""
    dec = Decoder(_model(name), batch=2, capacity=8, graph=False)
    before = inference._addresses(dec.caches)
    dec.prefill(torch.zeros(2, 3, dtype=torch.long))
    for _ in range(3):
        dec.step()
    assert inference._addresses(dec.caches) == before


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_step_reads_no_value_on_the_host(name, temperature, quiet):
    """What a capture forbids, checked without a GPU: the step under FakeTensorMode (tensors without values),
    where .item(), bool(tensor) or a shape that depends on a value raise."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    dec = Decoder(_model(name, torch.float32), batch=2, capacity=8, graph=False, temperature=temperature,
                  top_k=3 if temperature else None)
    with FakeTensorMode(allow_non_fake_inputs=True):
        dec._step()


def test_a_step_that_reads_a_value_is_caught_without_a_gpu(quiet):
    from torch._subclasses.fake_tensor import FakeTensorMode

    dec = Decoder(SequenceModel(17, 16, 1, _Syncs), batch=2, capacity=8, graph=False)
    with pytest.raises(Exception, match="local_scalar_dense"):
        with FakeTensorMode(allow_non_fake_inputs=True):
            dec._step()


def test_a_replaced_cache_is_detected():
    """The check behind the capture's in-place test can fail: a cache entry swapped for a new tensor."""
    caches = [{"h": torch.zeros(2, 3)}]
    before = inference._addresses(caches)
    caches[0]["h"] = caches[0]["h"] + 1
    assert inference._addresses(caches) != before
    caches = [{"k": torch.zeros(1), "length": 3}]
    before = inference._addresses(caches)
    caches[0]["length"] = 4  # host-side state: a graph cannot advance it
    assert inference._addresses(caches) != before


class _FakeCuda:
    """Just enough of torch.cuda for inference._capture_graph on a CPU, recording the calls (a test below)."""

    def __init__(self, monkeypatch, step_raises, end_raises, generator_stuck):
        self.calls, self.capturing, self.end_raises = [], False, end_raises
        this = self

        class Graph:
            def capture_begin(self, pool=None):
                this.calls.append("capture_begin")
                this.capturing = True

            def capture_end(self):
                this.calls.append("capture_end")
                this.capturing = False
                if this.end_raises:
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

        class Generator:
            def get_state(self):
                return "state"

            def set_state(self, state):
                this.calls.append(f"set_state {state}")

            def clone_state(self):
                return "copy"

            def graphsafe_set_state(self, state):
                this.calls.append(f"graphsafe_set_state {state}")

        @contextlib.contextmanager
        def stream(s):
            this.calls.append("stream on")
            yield
            this.calls.append("stream off")

        def sync_mode(mode):
            this.calls.append(f"sync mode {mode}")

        for name, value in dict(CUDAGraph=Graph, graph_pool_handle=lambda: (0, 7), stream=stream,
                                synchronize=lambda device=None: this.calls.append("synchronize"),
                                empty_cache=lambda: None, get_sync_debug_mode=lambda: 0,
                                set_sync_debug_mode=sync_mode, is_current_stream_capturing=lambda: this.capturing,
                                default_generators=(Generator(),)).items():
            monkeypatch.setattr(torch.cuda, name, value, raising=False)
        monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", lambda i, p: self.calls.append(f"end pool {p}"),
                            raising=False)
        monkeypatch.setattr(torch._C, "_cuda_releasePool", lambda i, p: self.calls.append(f"release pool {p}"),
                            raising=False)
        monkeypatch.setattr(inference, "_draws", lambda device: not generator_stuck)
        monkeypatch.setattr(inference, "_FAILED_CAPTURES", [])

        def step():
            this.calls.append("step")
            if step_raises:
                raise RuntimeError("called a synchronizing CUDA operation")

        self.step = step


@pytest.mark.parametrize("end_raises", [False, True])
def test_a_failed_capture_is_ended_and_undone(monkeypatch, end_raises):
    """The clean-up after a capture that fails, on a CPU with torch.cuda faked: the capture ended, on a stream
    context that is left; where capture_end failed (an invalidated capture), the graph's pool ended and released,
    the graph kept, the generator's state replaced if it cannot draw and set back; the device synchronised."""
    fake = _FakeCuda(monkeypatch, step_raises=True, end_raises=end_raises, generator_stuck=True)
    stream = type("Stream", (), {"device": torch.device("cuda", 0)})()
    graph, why = inference._capture_graph(fake.step, stream)
    assert graph is None and why == "capture failed with RuntimeError: called a synchronizing CUDA operation"
    undo = ["end pool (0, 7)", "release pool (0, 7)", "graphsafe_set_state copy", "set_state state"]
    assert fake.calls == (["synchronize", "stream on", "capture_begin", "sync mode error", "step", "sync mode 0",
                           "capture_end", "stream off"] + (undo if end_raises else []) + ["synchronize"])
    assert len(inference._FAILED_CAPTURES) == end_raises
    fake = _FakeCuda(monkeypatch, step_raises=False, end_raises=False, generator_stuck=False)
    graph, why = inference._capture_graph(fake.step, stream)
    assert why is None and graph is not None and fake.calls[-2:] == ["capture_end", "stream off"]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_static_kv_cache_step_and_extend_equal_the_growing_cache(dtype, tol):
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, n_heads=2).to(dtype)
    u = torch.randn(3, 11, 16, dtype=dtype)
    grow, fixed = attn.allocate_cache(3, capacity=2), attn.allocate_cache(3, capacity=16, static=True)
    ys = [attn.extend(u[:, :4], grow)]
    zs = [attn.extend(u[:, :4], fixed)]
    for t in range(4, 11):
        ys.append(attn.step(u[:, t], grow)[:, None])
        zs.append(attn.step(u[:, t], fixed)[:, None])
    assert rel_error(torch.cat(zs, 1), torch.cat(ys, 1)) < tol
    assert rel_error(torch.cat(zs, 1), attn(u)) < tol
    assert int(fixed["pos"]) == 11 and int(fixed["seen"].sum()) == 11 and fixed["k"].shape[2] == 16
    assert inference.cache_nbytes(fixed) == inference.cache_nbytes(grow)
    with pytest.raises(ValueError, match="capacity 16"):
        attn.extend(u[:, :6], fixed)


def test_fallback_is_said_once_and_graph_true_insists(quiet):
    model = _model("Mamba-2")
    if CUDA:
        pytest.skip("the CPU fallback: this machine has a GPU")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        first = Decoder(model)
        second = Decoder(model, batch=3)
        Decoder(model, graph=False)
    assert [str(w.message) for w in said] == [
        "ssm_edu.inference.Decoder decodes eagerly, one launch per operation: no CUDA device (a CUDA graph needs one)"]
    assert not first.graphed and not second.graphed and "no CUDA device" in first.why_eager
    with pytest.raises(RuntimeError, match="no CUDA device"):
        Decoder(model, graph=True)


@pytest.mark.heavy  # 73 s in the GPU test phase of 2026-12-07: started first there
def test_sampling_is_reproducible_and_capacity_checked(quiet):
    model = _model("Hybrid")
    prompt = torch.randint(0, 17, (2, 4), generator=torch.Generator().manual_seed(0))
    dec = Decoder(model, batch=2, capacity=12, temperature=1.0, top_k=6)
    a, b, c = dec.generate(prompt, 8, seed=3), dec.generate(prompt, 8, seed=3), dec.generate(prompt, 8, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="hold 12 positions"):
        dec.generate(prompt, 10)
    ssm = Decoder(_model("Mamba-2"), batch=2, capacity=4)
    assert ssm.generate(prompt, 10).shape == (2, 14)  # no KV cache: the capacity does not limit an SSM
    for bad in (dict(batch=0), dict(capacity=1.5), dict(temperature=-1.0), dict(top_k=0), dict(graph="yes")):
        with pytest.raises(ValueError):
            Decoder(model, **bad)
    with pytest.raises(ValueError, match="prompt"):
        dec.prefill(torch.zeros(3, 2, dtype=torch.long))


def test_gumbel_max_samples_the_softmax():
    """argmax(logits / T - log E), E ~ Exp(1): frequencies of a large batch against softmax(logits / T)."""
    gen = torch.Generator().manual_seed(0)
    n, logits = 40000, torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    for T, k in ((1.0, None), (0.5, None), (1.0, 2)):
        noise = torch.empty(n, 5).exponential_(generator=gen)
        tokens = sample_gumbel(logits.expand(n, 5), T, k, noise)
        freq = torch.bincount(tokens, minlength=5) / n
        target = logits / T if k is None else logits.masked_fill(logits < logits.topk(k).values[-1], -math.inf)
        assert (freq - torch.softmax(target, 0)).abs().max() < 0.01  # a few standard errors (0.0025)


def test_floor_bytes_by_hand():
    """Weights once, an SSM state and conv window twice (read and written), a KV cache once."""
    for name in ("Mamba-2", "Transformer"):
        model = _model(name, torch.float32)
        weights = 4 * count_parameters(model)
        cache = inference.model_cache_bytes(model, 100, batch=3)
        assert decode_floor_bytes(model, 100, batch=3) == weights + (cache if name == "Transformer" else 2 * cache)


def test_matched_models_have_about_the_same_size():
    sizes = {n: count_parameters(m) for n, m in matched_models(256, 256, 2, which=MODEL_NAMES).items()}
    ref = sizes["Mamba-2"]
    assert all(0.75 < s / ref < 1.25 for s in sizes.values()), sizes
    with pytest.raises(ValueError, match="unknown"):
        matched_models(10, 16, 1, which=("Mamba-4",))


def test_timing_and_profile_rows(quiet):
    models = matched_models(20, 16, 1, which=("Transformer", "Mamba-3"), impl="vectorized")
    rows = decode_speed(models, batch=2, context=8, n_tokens=2, repeats=1)
    assert {(r["model"], r["mode"]) for r in rows} == {(n, m) for n in models for m in ("eager", "graph")}
    for r in rows:  # the models are on the CPU: no graphs
        if r["mode"] == "eager":
            assert r["s_per_token"] > 0 and r["tokens_per_s"] == pytest.approx(2 / r["s_per_token"])
        else:
            assert r["s_per_token"] is None and "CUDA" in r["why_eager"]
    dec = Decoder(models["Mamba-3"], capacity=16)
    assert time_decoder(dec, 4, n_tokens=2, repeats=1) > 0 and dec.position == 8
    prof = step_profile(dec, steps=2, top=3)
    assert prof["ops"] > 50 and prof["wall_us"] > 0 and len(prof["rows"]) == 5
    assert prof["rows"][-1]["op"] == "outside any operation" and prof["kernels"] is None


def test_static_caches_are_fresh_and_fixed():
    model = _model("Hybrid", torch.float32)
    caches = static_caches(model, 2, 10)
    attn = [c for c in caches if "pos" in c]
    assert attn and all(c["k"].shape[2] == 10 for c in attn)
    assert all(not bool(x.any()) for _, x in inference._leaves(caches) if isinstance(x, torch.Tensor))


def test_peer_state_update_swaps_into_the_model(quiet):
    """The benchmark's swap: another selective_state_update inside our Mamba-2 step, the rest unchanged.

    On a GPU (with .peers filled) mamba_ssm's Triton kernel; elsewhere our naive
    form stands in for it (mamba_ssm's kernel needs CUDA), counting its calls.
    """
    from benchmarks import peers
    from benchmarks.decode import peer_update, swapped

    import ssm_edu.mamba2
    from ssm_edu.selective import selective_state_update

    calls = []
    if CUDA:
        try:
            ssu = peers.mamba_ssm("ops.triton.selective_state_update").selective_state_update
        except peers.Missing as why:
            pytest.skip(str(why))
    else:
        def ssu(*args, **kwargs):
            calls.append(1)
            return selective_state_update(*args, **kwargs, impl="naive")
    device = "cuda" if CUDA else "cpu"
    model = _model("Mamba-2", torch.float32, device=device, impl="auto", layers=2)
    prompt = torch.randint(0, 17, (2, 5), device=device)
    ours = Decoder(model, batch=2, capacity=8, graph=False)
    ours.generate(prompt, 3)
    with swapped(ssm_edu.mamba2, "selective_state_update", peer_update(ssu)):
        theirs = Decoder(model, batch=2, capacity=8, graph=False)
        theirs.generate(prompt, 3)
    assert ssm_edu.mamba2.selective_state_update is selective_state_update
    assert CUDA or len(calls) == 4 * 2  # 4 layers, 2 steps after the prefill
    assert rel_error(theirs.logits, ours.logits) < 1e-5  # the same function, computed by other code


# ---------------------------------------------------------------------------- on a GPU


@gpu_only
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_graphed_and_eager_generation_give_the_same_tokens(name, dtype, temperature):
    model = _model(name, dtype, device="cuda", impl="auto", d=64, layers=2)
    prompt = torch.randint(0, 17, (3, 7), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    dec = Decoder(model, batch=3, capacity=48, temperature=temperature, top_k=10 if temperature else None, graph=True)
    assert dec.graphed and dec.why_eager is None
    dec.use_graph = False
    eager = dec.generate(prompt, 32, seed=5)
    eager_logits = dec.logits.clone()
    dec.use_graph = True
    graphed = dec.generate(prompt, 32, seed=5)
    assert torch.equal(graphed, eager)
    assert torch.equal(dec.logits, eager_logits)
    other = Decoder(model, batch=3, capacity=48, temperature=temperature, top_k=10 if temperature else None,
                    graph=False)  # fresh buffers, eager: the same tokens again
    assert torch.equal(other.generate(prompt, 32, seed=5), graphed)
    assert torch.equal(dec.generate(prompt, 32, seed=5), graphed)  # replayed again after a reset


@gpu_only
@pytest.mark.parametrize("name", ["Mamba-2", "Transformer", "Mamba-3"])
def test_graphed_logits_follow_the_plain_step(name):
    """The graph computes the model: its logits against model.step on growing caches (float32)."""
    model = _model(name, torch.float32, device="cuda", impl="auto", d=64, layers=2)
    prompt = torch.randint(0, 17, (2, 6), device="cuda")
    dec = Decoder(model, batch=2, capacity=32, graph=True)
    out = dec.generate(prompt, 12)
    caches = model.allocate_cache(2)
    with torch.no_grad():
        for t in range(out.shape[1] - 1):
            logits = model.step(out[:, t], caches)
    assert rel_error(dec.logits.float(), logits.float()) < 1e-3  # float32; cuDNN may use TF32 in the prefill conv


class _Syncs(nn.Module):
    """A block whose step reads a value on the host (.item()): a CUDA graph cannot capture it."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * self.w

    def allocate_cache(self, batch, device=None, dtype=None):
        return {"n": torch.zeros(1, device=device)}

    def step(self, x, cache):
        cache["n"].add_(1)
        return x * self.w * (1.0 if cache["n"].item() > 0 else 0.0)


class _Replaces(_Syncs):
    """A block whose step replaces its cache tensor instead of updating it: a graph would read stale memory."""

    def step(self, x, cache):
        cache["n"] = cache["n"] + 1
        return x * self.w


@gpu_only
@pytest.mark.parametrize("block, why", [(_Syncs, "capture failed"), (_Replaces, "replaces its cache")])
def test_a_step_that_cannot_be_captured_falls_back(block, why, quiet):
    """The fallback, said once, and torch left as it was: the same current stream, no capture underway, the
    default generator where it was and able to draw (after torch.cuda.graph's failed capture, torch 2.11
    raised on every later random number), and the next capture works."""
    model = SequenceModel(17, 16, 2, block).cuda().eval()
    stream, rng = torch.cuda.current_stream(), torch.cuda.get_rng_state()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        dec = Decoder(model, batch=2, capacity=8)
    ours = [str(w.message) for w in said if "ssm_edu.inference.Decoder" in str(w.message)]
    assert not dec.graphed and why in dec.why_eager
    assert len(ours) == 1 and why in ours[0]
    assert torch.cuda.current_stream() == stream and not torch.cuda.is_current_stream_capturing()
    assert torch.equal(torch.cuda.get_rng_state(), rng)
    prompt = torch.randint(0, 17, (2, 3), device="cuda")
    assert torch.equal(dec.generate(prompt, 4), Decoder(model, batch=2, capacity=8, graph=False).generate(prompt, 4))
    with pytest.raises(RuntimeError, match=why):
        Decoder(model, batch=2, capacity=8, graph=True)
    good = _model("Mamba-2", torch.float32, device="cuda", impl="auto", d=64, layers=2)
    graphed, eager = (Decoder(good, batch=2, capacity=16, graph=g) for g in (True, False))
    assert torch.equal(graphed.generate(prompt, 6), eager.generate(prompt, 6))
