"""Decoding one token at batch 1 as the context grows: a Transformer's KV cache against SSM states (chapter 10).

Models of matched size (``ssm_edu.inference.matched_models``): a parallel
Transformer of 12 layers (16 heads of 64, MLP 4x) against Mamba-1, Mamba-2 and
Mamba-3 models of 24 layers, all with d_model 1024, a 256-token vocabulary
(so the embedding and head are small beside the layers), bf16 weights.

For each context T the caches are filled as if T tokens had been processed
(``filled_caches``: T random keys and values per attention layer; the SSM
states do not depend on T), then one ``model.step`` is timed: eager PyTorch,
one launch after another, as ``ssm_edu.lm.generate`` runs it. Rows:

    {"op": "decode", "impl": "transformer" | "mamba1" | "mamba2" | "mamba3",
     "pass": "fwd", "shape": "B1 ctx{T} d1024 layers{n}", "dtype": "bf16",
     "median_us": time per generated token,
     "floor_us": bytes of the KV cache or the states read per token / HBM bandwidth,
     "peak_mib": the most GPU memory allocated while decoding (weights + cache + temporaries),
     "cache_mib": the cache alone}

The floor counts the cache only: it shows when reading the KV cache, rather
than launching kernels, sets the pace. A model's rows stop after a step
slower than 0.1 s or once memory runs out.
"""

from __future__ import annotations

import torch

from ssm_edu.inference import cache_nbytes, filled_caches, matched_models, model_cache_bytes

from .suite import Context, missing_row, register

IMPL = {"Transformer": "transformer", "Mamba-1": "mamba1", "Mamba-2": "mamba2", "Mamba-3": "mamba3"}
ROOM = 16384  # spare KV positions: the timer calls step a few hundred times, and the cache must not reallocate


def decode_rows(ctx, d_model: int = 1024, n_layers: int = 12, contexts=tuple(1 << k for k in range(10, 20)),
                dtype=torch.bfloat16, vocab: int = 256, which=tuple(IMPL), max_us: float = 1e5):
    """Yield the rows described in the module docstring for ``which`` models at every context."""
    gpu = ctx.device.type == "cuda"
    name_dtype = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    for name in which:
        try:
            model = matched_models(vocab, d_model, n_layers, which=(name,), device=ctx.device, dtype=dtype)[name]
        except Exception as err:  # a block that cannot be built at this size or dtype: say so, go on
            yield missing_row("decode", IMPL[name], "fwd", f"B1 ctx{contexts[0]} d{d_model}", name_dtype, repr(err)[:200])
            continue
        layers = len(model.blocks)
        token = torch.zeros(1, dtype=torch.long, device=ctx.device)
        for T in contexts:
            shape = f"B1 ctx{T} d{d_model} layers{layers}"
            if not ctx.wants(shape):
                continue
            caches = None
            try:
                caches = filled_caches(model, T, batch=1, room=ROOM)
                cache_bytes = model_cache_bytes(model, T, dtype=dtype)
                assert cache_nbytes(caches) == cache_bytes
                with torch.no_grad():
                    model.step(token, caches)  # compile the kernels before measuring
                    if gpu:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    for _ in range(3):  # the peak of decoding itself, before the timer adds its L2-flush buffer
                        model.step(token, caches)
                    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else None
                    us = ctx.time_us(lambda: model.step(token, caches))
            except torch.OutOfMemoryError:
                del caches
                yield missing_row("decode", IMPL[name], "fwd", shape, name_dtype, "out of GPU memory")
                break
            except Exception as err:
                del caches
                yield missing_row("decode", IMPL[name], "fwd", shape, name_dtype, repr(err)[:200])
                break
            del caches
            if gpu:
                torch.cuda.empty_cache()
            yield {"op": "decode", "impl": IMPL[name], "pass": "fwd", "shape": shape, "dtype": name_dtype,
                   "median_us": us, "floor_us": 1e6 * cache_bytes / ctx.hbm_bytes_s, "peak_mib": peak,
                   "cache_mib": cache_bytes / 2**20}
            if us > max_us:
                break
        del model


@register("decode")
def bench_decode(ctx: Context):
    """Time per generated token, batch 1, d_model 1024: Transformer (12 layers) vs Mamba-1/2/3 (24 layers), T = 2^10 .. 2^19."""
    yield from decode_rows(ctx)


__all__ = ["bench_decode", "decode_rows"]
