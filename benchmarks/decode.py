"""Decoding one token: eager PyTorch against the same step captured in a CUDA graph (chapter 10).

Models of matched size (``ssm_edu.inference.matched_models``): d_model 768,
a 256-token vocabulary (so that the embedding and head are small beside the
layers), bf16 weights; a 12-layer Transformer (12 heads of 64, MLP 4x)
against 24-layer Mamba-1, Mamba-2, Mamba-3, Gated DeltaNet and hybrid
(Mamba-2 with one attention layer in eight) models. Every step runs through
``ssm_edu.inference.Decoder`` on static buffers, with Gumbel-max sampling
(temperature 1): eagerly, one launch per operation as ``ssm_edu.lm.generate``
runs it, and replayed from a CUDA graph of the whole step.

Rows, at batch 1 and 64:

    {"op": "decode", "impl": "<model>-eager" | "<model>-graph" | "<model>-graph-mamba_ssm"
                             | "<model>-eager-fused" | "<model>-graph-fused" (Mamba-2, Mamba-3),
     "pass": "fwd", "shape": "B{b} ctx{T} d768 layers{n}", "dtype": "bf16",
     "median_us": time per step (b tokens), "tokens_per_s": b / time,
     "floor_us": decode_floor_bytes / measured HBM bandwidth (every weight
        read once, SSM states and conv windows read and written, KV caches read),
     "peak_mib": the most GPU memory allocated while decoding,
     "cache_mib": the caches at T tokens,
     "matches_eager" (graph rows): the graph and the eager step generate the same tokens,
     "kernels_per_step" (eager rows at batch 1): the GPU kernels a step launches (torch.profiler)}

The SSM models are measured at T = 1024 only (their step does not depend on
T); the Transformer and the hybrid at T = 1K, 8K and 64K, so that the
crossover is measured. A shape whose caches would not fit in the GPU's free
memory, a graph that cannot be captured, or any error gives a row that says
why (``missing``), never a crash; the eager row of a shape whose graph fails
is still measured.

The peer: mamba_ssm's Triton ``selective_state_update`` (``benchmarks/peers.py``)
swapped for ours inside the same graphed Mamba-2 and Mamba-1 models, in the
same run: everything else in the step is the same, so the difference is the
state update. ``peer_rel_error``: its first step's logits against ours.

The Mamba-2 and Mamba-3 models are also timed with their blocks' fused
decoding steps (``fused_step``: ``kernels/mamba2_block_step.py``, three
kernels between the two projections, and ``kernels/mamba3_block_step.py``,
one), eager and graphed; ``peer_rel_error`` of the graphed row: its first
logits against the PyTorch step's.

Timing: ``ssm_edu.inference.time_decoder``, the median of 3 runs of 16 steps
back to back (CUDA events). The run keeps to ``budget_s`` (110 s after the
bandwidth measurement): rows it has no time left for say so. Expected on an
H100: about 60-90 s for the whole op (``python -m benchmarks --op decode``).
"""

from __future__ import annotations

import contextlib
import gc
import time

import torch

import ssm_edu.mamba
import ssm_edu.mamba2
import ssm_edu.mamba3_block
from ssm_edu.inference import (Decoder, decode_floor_bytes, kernels_per_step, matched_models, model_cache_bytes,
                               time_decoder)
from ssm_edu.numerics import rel_error

from . import peers
from .suite import Context, missing_row, register

IMPL = {"Transformer": "transformer", "Mamba-1": "mamba1", "Mamba-2": "mamba2", "Mamba-3": "mamba3",
        "DeltaNet": "deltanet", "Hybrid": "hybrid"}
ORDER = ("Mamba-2", "Mamba-3", "Mamba-1", "DeltaNet", "Transformer", "Hybrid")  # most wanted first
GROWING = ("Transformer", "Hybrid")  # KV caches: measured at every context
PEER_MODULES = {"Mamba-2": ssm_edu.mamba2, "Mamba-1": ssm_edu.mamba}  # where the block's step finds the update
NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32"}
FUSED = {"Mamba-2": ssm_edu.mamba2.Mamba2,  # blocks with a fused decoding step (``fused_step``)
         "Mamba-3": ssm_edu.mamba3_block.Mamba3}


@contextlib.contextmanager
def swapped(module, name: str, replacement):
    """``module.name`` replaced for the duration (the block's step looks the function up at every call)."""
    old = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, old)


def peer_update(ssu):
    """mamba_ssm's ``selective_state_update`` with our signature (it takes no ``impl``)."""
    def update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, impl=None):
        return ssu(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)

    return update


def _free_bytes(device) -> float:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else float("inf")


def _release(device, collect: bool = False) -> None:
    """Give the memory of a finished shape back (a full garbage collection only where cycles may hold GPU memory:
    it takes a fraction of a second)."""
    if device.type == "cuda":
        if collect:
            gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _first_logits(dec: Decoder, prompt: torch.Tensor) -> torch.Tensor:
    """Logits of the first step after a prefill (the step's only difference from the prefill is the state update)."""
    dec.prefill(prompt, seed=0)
    dec.step()
    return dec.logits.float().clone()


def _shape_rows(ctx, model, name, batch, T, shape, dtype, n_tokens, repeats, peer):
    """The eager, graph and peer rows of one model at one batch and context."""
    gpu = ctx.device.type == "cuda"
    key, base = IMPL[name], {"op": "decode", "pass": "fwd", "shape": shape, "dtype": NAMES[dtype]}
    capacity = -(-(T + n_tokens + 16) // 64) * 64  # the timed steps never run out of positions
    need = model_cache_bytes(model, capacity, batch)
    modes = [f"{key}-eager", f"{key}-graph"] + ([f"{key}-graph-mamba_ssm"] if peer and name in PEER_MODULES else [])
    modes += [f"{key}-eager-fused", f"{key}-graph-fused"] if name in FUSED else []
    if need > 0.8 * _free_bytes(ctx.device):
        why = f"the caches need {need / 2**30:.1f} GiB, {_free_bytes(ctx.device) / 2**30:.1f} GiB free"
        for impl in modes:
            yield missing_row("decode", impl, "fwd", shape, base["dtype"], why)
        return
    floor_us = 1e6 * decode_floor_bytes(model, T, batch) / ctx.hbm_bytes_s
    cache_mib = model_cache_bytes(model, T, batch) / 2**20
    prompt = torch.randint(0, model.embedding.weight.shape[0], (batch, 8),
                           generator=torch.Generator().manual_seed(0)).to(ctx.device)
    dec, impl, ours, failed, logits = None, modes[0], None, False, {}
    try:
        dec = Decoder(model, batch=batch, capacity=capacity, temperature=1.0)  # captured where possible
        yield from _timed(ctx, dec, modes[:2], base, batch, T, n_tokens, repeats, floor_us, cache_mib, prompt, logits)
        ours = logits.pop("graph", None)
        logits.pop("impl")
        graphed, why_eager = dec.graphed, dec.why_eager
        if FUSED.get(name):
            del dec
            dec = None
            _release(ctx.device)
            yield from _fused_rows(ctx, model, name, batch, T, base, capacity, n_tokens, repeats, floor_us, cache_mib,
                                   prompt, ours)
        if len(modes) > 2 and modes[2].endswith("mamba_ssm"):
            impl = modes[2]
            if not graphed:
                yield missing_row("decode", impl, "fwd", shape, base["dtype"], why_eager)
                return
            del dec
            dec = None
            _release(ctx.device)
            try:
                ssu = peers.mamba_ssm("ops.triton.selective_state_update").selective_state_update
            except peers.Missing as why:
                yield missing_row("decode", impl, "fwd", shape, base["dtype"], str(why))
                return
            with swapped(PEER_MODULES[name], "selective_state_update", peer_update(ssu)):
                dec = Decoder(model, batch=batch, capacity=capacity, temperature=1.0)
                if not dec.graphed:
                    yield missing_row("decode", impl, "fwd", shape, base["dtype"], dec.why_eager)
                    return
                if gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                s = time_decoder(dec, T, n_tokens=n_tokens, repeats=repeats)
                row = base | {"impl": impl, "median_us": 1e6 * s, "floor_us": floor_us, "tokens_per_s": batch / s,
                              "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
                              "cache_mib": cache_mib}
                if ours is not None:
                    row["peer_rel_error"] = float(rel_error(_first_logits(dec, prompt), ours))
            yield row
    except torch.OutOfMemoryError:
        failed = True
        yield missing_row("decode", logits.get("impl", impl), "fwd", shape, base["dtype"], "out of GPU memory")
    except Exception as err:  # one shape's failure is a row that says why; the run goes on
        failed = True
        yield missing_row("decode", logits.get("impl", impl), "fwd", shape, base["dtype"],
                          f"{type(err).__name__}: {err}"[:240])
    finally:
        del dec
        _release(ctx.device, collect=failed)


def _timed(ctx, dec, impls, base, batch, T, n_tokens, repeats, floor_us, cache_mib, prompt, logits):
    """A row per impl: ``dec`` timed eagerly, or replaying its graph where the impl names "-graph"; a graphed
    row also says whether graph and eager generate the same tokens, and leaves its first logits in
    ``logits["graph"]`` (and the impl being timed in ``logits["impl"]``)."""
    gpu = ctx.device.type == "cuda"
    for impl in impls:
        logits["impl"] = impl  # the row an error belongs to
        graph = "-graph" in impl
        if graph and not dec.graphed:
            yield missing_row("decode", impl, "fwd", base["shape"], base["dtype"], dec.why_eager)
            continue
        dec.use_graph = graph
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        s = time_decoder(dec, T, n_tokens=n_tokens, repeats=repeats)
        row = base | {"impl": impl, "median_us": 1e6 * s, "floor_us": floor_us, "tokens_per_s": batch / s,
                      "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if gpu else None, "cache_mib": cache_mib}
        if gpu and batch == 1 and not graph:
            try:  # what the graph replays: as many kernels as the eager step launches
                row["kernels_per_step"] = kernels_per_step(dec)
            except Exception as err:  # a profiler that does not work here costs the count, not the row
                row["kernels_per_step"] = None
                print(f"decode {impl} {base['shape']}: no kernel count ({type(err).__name__}: {err})"[:240])
        if graph:
            dec.use_graph = False
            eager = dec.generate(prompt, 8, seed=0)
            dec.use_graph = True
            row["matches_eager"] = bool(torch.equal(dec.generate(prompt, 8, seed=0), eager))
            logits["graph"] = _first_logits(dec, prompt)
        yield row


def _fused_rows(ctx, model, name, batch, T, base, capacity, n_tokens, repeats, floor_us, cache_mib, prompt, ours):
    """The same model with its blocks' fused decoding step (``FUSED``), eager and graphed."""
    key = IMPL[name]
    blocks = [m for m in model.modules() if isinstance(m, FUSED[name])]
    dec, got = None, {}
    try:
        for m in blocks:
            m.fused_step = True
        dec = Decoder(model, batch=batch, capacity=capacity, temperature=1.0)
        for row in _timed(ctx, dec, (f"{key}-eager-fused", f"{key}-graph-fused"), base, batch, T, n_tokens, repeats,
                          floor_us, cache_mib, prompt, got):
            if row["impl"].endswith("graph-fused") and "graph" in got and ours is not None:
                row["peer_rel_error"] = float(rel_error(got["graph"], ours))  # against the PyTorch step's logits
            yield row
    except Exception as err:  # noqa: BLE001  (a failing variant is a row that says why)
        yield missing_row("decode", got.get("impl", f"{key}-eager-fused"), "fwd", base["shape"], base["dtype"],
                          f"{type(err).__name__}: {err}"[:240])
    finally:
        for m in blocks:
            m.fused_step = False
        del dec
        _release(ctx.device, collect=True)


def summary(rows: list[dict]) -> str:
    """The rows as one table: per model, batch and context, eager and graphed µs per step, the floor, the
    graph's speed-up and distance from the floor, the kernels of a step, whether graph and eager tokens agree."""
    fmt = "{:12s} {:>5s} {:>6s} {:>9s} {:>9s} {:>9s} {:>8s} {:>8s} {:>7s} {:>6s}"
    lines = [fmt.format("model", "batch", "ctx", "eager us", "graph us", "floor us", "speed-up", "graph/fl",
                        "kernels", "same")]
    keys = dict.fromkeys((r["impl"].split("-")[0], r["shape"]) for r in rows)
    for key, shape in keys:
        by = {r["impl"][len(key) + 1:]: r for r in rows if r["shape"] == shape and r["impl"].split("-")[0] == key}
        e, g = by.get("eager", {}), by.get("graph", {})
        b, T = shape.split()[0][1:], shape.split()[1][3:]
        us = lambda r: f"{r['median_us']:.0f}" if r.get("median_us") else "-"  # noqa: E731
        floor = g.get("floor_us") or e.get("floor_us")
        lines.append(fmt.format(
            key, b, T, us(e), us(g), f"{floor:.0f}" if floor else "-",
            f"{e['median_us'] / g['median_us']:.1f}x" if e.get("median_us") and g.get("median_us") else "-",
            f"{g['median_us'] / floor:.1f}x" if g.get("median_us") and floor else "-",
            f"{e['kernels_per_step']:.0f}" if e.get("kernels_per_step") else "-", str(g.get("matches_eager", "-"))))
        for peer, r in ((k, v) for k, v in by.items() if k.startswith("graph-")):
            lines.append(fmt.format(f"  {peer[6:]}", b, T, "", us(r), "", "", f"{r['median_us'] / floor:.1f}x"
                                    if r.get("median_us") and floor else "-", "", f"{r.get('peer_rel_error', '-'):.1e}"
                                    if r.get("peer_rel_error") is not None else "-"))
    return "\n".join(lines)


def decode_rows(ctx, d_model: int = 768, n_layers: int = 12, batches=(1, 64), ssm_context: int = 1024,
                contexts=(1024, 8192, 65536), dtype=torch.bfloat16, vocab: int = 256, which=ORDER,
                n_tokens: int = 16, repeats: int = 3, peer: bool = True, budget_s: float = 110.0):
    """Yield the rows of the module docstring for ``which`` models (``matched_models`` names), in that order.

    At the end, print ``summary`` of them (the peer lines' last column: the relative error of its logits).
    """
    start, done = time.monotonic(), []
    for row in _rows(ctx, d_model, n_layers, batches, ssm_context, contexts, dtype, vocab, which, n_tokens, repeats,
                     peer, budget_s, start):
        done.append(row)
        yield row
    print(f"decode: {len(done)} rows in {time.monotonic() - start:.0f} s", summary(done), sep="\n", flush=True)


def _rows(ctx, d_model, n_layers, batches, ssm_context, contexts, dtype, vocab, which, n_tokens, repeats, peer,
          budget_s, start):
    for name in which:
        model = None
        try:
            with ctx.device:  # parameters made where they will be used: no copy of the weights
                model = matched_models(vocab, d_model, n_layers, which=(name,), dtype=dtype)[name]
        except Exception as err:  # a model that cannot be built at this size or dtype: say so, go on
            yield missing_row("decode", f"{IMPL[name]}-eager", "fwd", f"B{batches[0]} ctx{ssm_context} d{d_model}",
                              NAMES[dtype], f"{type(err).__name__}: {err}"[:240])
            continue
        layers = len(model.blocks)
        for batch in batches:
            for T in (contexts if name in GROWING else (ssm_context,)):
                shape = f"B{batch} ctx{T} d{d_model} layers{layers}"
                if not ctx.wants(shape):
                    continue
                if time.monotonic() - start > budget_s:
                    yield missing_row("decode", f"{IMPL[name]}-eager", "fwd", shape, NAMES[dtype],
                                      f"the run's time budget of {budget_s:.0f} s was spent")
                    continue
                yield from _shape_rows(ctx, model, name, batch, T, shape, dtype, n_tokens, repeats, peer)
        del model
        _release(ctx.device, collect=True)


@register("decode")
def bench_decode(ctx: Context):
    """Time per step, batch 1 and 64, d_model 768, bf16: eager and CUDA-graphed, six block types, KV at 1K-64K."""
    yield from decode_rows(ctx)


__all__ = ["bench_decode", "decode_rows", "summary", "swapped", "peer_update"]
