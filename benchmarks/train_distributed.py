"""Data-parallel, fully sharded and sequence-parallel runs, launched by torchrun (the appendix "Beyond one GPU").

    torchrun --standalone --nproc-per-node R benchmarks/train_distributed.py --mode ddp|fsdp|sp [options]

``ddp`` and ``fsdp``: train chapter 8's Mamba-2 language model
(``ssm_edu.lm.SequenceModel`` with ``ssm_edu.mamba2`` blocks) on the character
corpus of ``ssm_edu.tasks``, wrapped in ``DistributedDataParallel`` or with
FSDP2's ``fully_shard`` on every block and on the root. Each rank draws its
own batches, so the global batch is R times ``--batch``. Every step logs the
loss (averaged over the ranks) and the tokens per second of the whole group;
one untimed step is run under ``CollectiveCounter`` to measure the bytes each
rank sends, beside the count from the shapes (``ddp_bytes``, ``fsdp_bytes``).

``sp``: first checks ``ssd_sequence_parallel`` against single-device ``ssd``
with this machine's kernels (``check_sequence_parallel``, float32, small),
then times it (forward and backward, batch 1) on a total length L split over
the R ranks, with each exchange, for every L of ``--lengths``, and
single-device ``ssd`` on the whole sequence on rank 0 (``null`` where it runs
out of memory). One repetition is counted.

gloo on CPU, one thread per process; NCCL on GPUs, one GPU per rank (``LOCAL_RANK``), with NVLink
multicast off (``NCCL_NVLS_ENABLE=0``). Sizes default to the device found
(``--size cpu|gpu`` overrides). Rank 0 writes one JSON file: ``--out``, else
``$OUT/<device>/<mode>-<R>.json`` when ``$OUT`` is set, else
``book/data/distributed/<device>/<mode>-<R>.json``, which the appendix reads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import re
import statistics
import time

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # before torch.distributed starts NCCL

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ssm_edu import ssd  # noqa: E402
from ssm_edu.device import device_name  # noqa: E402
from ssm_edu.distributed import (EXCHANGES, CollectiveCounter, check_sequence_parallel, ddp_bytes,  # noqa: E402
                                 fsdp_bytes, sequence_parallel_bytes, split_lengths, ssd_sequence_parallel)

ROOT = pathlib.Path(__file__).resolve().parents[1]

SIZES = {  # model and run sizes per device; --size picks, the device decides by default
    "cpu": dict(d_model=64, n_layers=2, d_state=16, headdim=16, chunk_size=32, seq_len=128, batch=4, steps=20,
                warmup=3, lr=3e-3, sp_heads=4, sp_headdim=16, sp_state=16, sp_lengths=[1024, 4096, 16384], sp_reps=5),
    "gpu": dict(d_model=768, n_layers=12, d_state=128, headdim=64, chunk_size=64, seq_len=2048, batch=8, steps=30,
                warmup=5, lr=1e-3, sp_heads=24, sp_headdim=64, sp_state=128,
                sp_lengths=[1 << 14, 1 << 16, 1 << 18, 1 << 20], sp_reps=10),
}


def setup():
    """The process group from torchrun's environment: NCCL on GPUs (one per rank), gloo on CPU."""
    gpu = torch.cuda.is_available()
    if gpu:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():  # say so, rather than CUDA's "invalid device ordinal"
            raise SystemExit(f"train_distributed.py: local rank {local} has no GPU of its own "
                             f"({torch.cuda.device_count()} visible): start one process per GPU, or hide the GPUs "
                             "(CUDA_VISIBLE_DEVICES=) to run on CPU with gloo")
        torch.cuda.set_device(local)
        torch.set_float32_matmul_precision("high")  # TF32 matrix products, as training on GPUs does
        device = torch.device("cuda", local)
    else:
        torch.set_num_threads(1)  # one core per process: R processes use R cores, as R GPUs would
        device = torch.device("cpu")
    # A rank that fails (say, out of memory) leaves the others waiting in a collective: 3 minutes, then an error.
    dist.init_process_group("nccl" if gpu else "gloo", timeout=datetime.timedelta(minutes=3),
                            **({"device_id": device} if gpu else {}))
    return device


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def group_max(x: float, device) -> float:
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def gather(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def train(args, size, device) -> dict:
    """DDP or FSDP2 training of the Mamba-2 LM; the module docstring says what is logged."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from ssm_edu.lm import SequenceModel, count_parameters
    from ssm_edu.mamba2 import mamba2_block
    from ssm_edu.tasks import char_corpus

    rank, world = dist.get_rank(), dist.get_world_size()
    corpus = char_corpus()
    vocab, L, b = len(corpus.chars), size["seq_len"], size["batch"]
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = SequenceModel(vocab, size["d_model"], size["n_layers"],
                          mamba2_block(d_state=size["d_state"], headdim=size["headdim"],
                                       chunk_size=size["chunk_size"])).to(device)
    n_params = count_parameters(model)
    if args.mode == "ddp":
        counted = ddp_bytes(model, world)
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        counted = fsdp_bytes(model, world)
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=size["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank + 1)  # each rank its own batches
    text = corpus.train

    def batch():
        starts = torch.randint(len(text) - L - 1, (b,), generator=gen)
        x = torch.stack([text[s:s + L + 1] for s in starts.tolist()]).to(device)
        return x[:, :-1], x[:, 1:]

    def step():
        x, y = batch()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    measured = None
    for i in range(size["warmup"]):
        if i == size["warmup"] - 1:  # after DDP has rebuilt its buckets (second step): a step like the others
            with CollectiveCounter() as counter:
                step()
            measured = counter.sent(world)
        else:
            step()
    log = []
    for i in range(size["steps"]):
        sync(device)
        dist.barrier()
        t0 = time.perf_counter()
        loss = step()
        sync(device)
        seconds = group_max(time.perf_counter() - t0, device)
        dist.all_reduce(loss)
        log.append({"step": i, "loss": loss.item() / world, "seconds": seconds,
                    "tokens_per_s": world * b * L / seconds})
        if rank == 0 and (i % 10 == 0 or i == size["steps"] - 1):
            print(f"step {i:4d}  loss {log[-1]['loss']:.3f}  {log[-1]['tokens_per_s']:10.0f} tokens/s", flush=True)
    return {"params": n_params, "tokens_per_step": world * b * L,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in log),
            "bytes_sent_per_rank": {"measured": gather(measured), "counted": counted},
            "steps": log}


def sequence_parallel(args, size, device) -> dict:
    """Forward and backward of ssd_sequence_parallel against length, each exchange, and single-device ssd."""
    rank, world = dist.get_rank(), dist.get_world_size()
    H, P, N, Q = size["sp_heads"], size["sp_headdim"], size["sp_state"], size["chunk_size"]
    gen = torch.Generator(device=device).manual_seed(args.seed + rank)

    def problem(L):
        def r(*shape):
            return torch.randn(*shape, generator=gen, device=device)
        return dict(x=r(1, L, H, P), dt=r(1, L, H) - 2, A=-torch.rand(H, generator=gen, device=device) - 0.5,
                    B=r(1, L, 1, N), C=r(1, L, 1, N))

    def timed(fn, kw):
        """Median seconds (the slowest rank) of forward + backward; None where a rank ran out of memory."""
        for t in kw.values():
            t.requires_grad_(True)
        times = []
        for i in range(size["sp_reps"] + 2):  # two warm-up repetitions (Triton compiles on the first)
            sync(device)
            dist.barrier()
            t0 = time.perf_counter()
            try:
                fn(**kw).sum().backward()
                sync(device)
                elapsed = time.perf_counter() - t0
            except torch.cuda.OutOfMemoryError:
                elapsed = math.inf
                torch.cuda.empty_cache()
            times.append(group_max(elapsed, device))  # every rank learns of a failure and stops with it
            if math.isinf(times[-1]):
                return None
        return statistics.median(times[2:])

    check = {}  # first, the sequence-parallel results against one device, with this machine's kernels (float32)
    for exchange in EXCHANGES:
        res = check_sequence_parallel("ssd", exchange, None, 64 * world + 37, args.seed, torch.float32,
                                      impl="auto", device=device)
        check[exchange] = gather(max(v for k, v in res.items() if "bytes" not in k))
    if rank == 0:
        print("largest relative error against one device (values and gradients):",
              {e: f"{max(v):.1e}" for e, v in check.items()}, flush=True)
    rows = []
    for L in args.lengths or size["sp_lengths"]:
        kw = problem(split_lengths(L, world)[rank])
        row = {"L": L, "world": world}
        for exchange in EXCHANGES:
            def fn(**k):
                return ssd_sequence_parallel(**k, chunk_size=Q, dt_softplus=True, exchange=exchange)
            row[f"{exchange}_seconds"] = timed(fn, kw)
            if row[f"{exchange}_seconds"] is not None:
                with CollectiveCounter() as counter:
                    fn(**kw).sum().backward()
                row[f"{exchange}_bytes_sent"] = {
                    "measured": gather(counter.sent(world)),
                    "counted": [sequence_parallel_bytes(exchange, world, r, H * P * N, H) for r in range(world)]}
        single = None
        if rank == 0 and not args.no_single:
            try:
                whole = problem(L)
                for t in whole.values():
                    t.requires_grad_(True)
                times = []
                for i in range(size["sp_reps"] + 2):
                    sync(device)
                    t0 = time.perf_counter()
                    ssd(**whole, chunk_size=Q, dt_softplus=True).sum().backward()
                    sync(device)
                    times.append(time.perf_counter() - t0)
                single = statistics.median(times[2:])
                del whole
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
        row["single_device_seconds"] = gather(single)[0]
        if device.type == "cuda":
            row["peak_gib_rank0"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
        rows.append(row)
        if rank == 0:
            print(f"L {L:9d}  " + "  ".join(f"{e} {row[f'{e}_seconds'] or float('nan'):8.4f} s" for e in EXCHANGES)
                  + f"  single device {single if single is not None else float('nan'):8.4f} s", flush=True)
        del kw
    return {"shape": {"batch": 1, "H": H, "P": P, "N": N, "G": 1, "chunk_size": Q},
            "max_rel_error_per_rank": check, "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["ddp", "fsdp", "sp"], required=True)
    parser.add_argument("--size", choices=list(SIZES), default=None, help="sizes (default: by the device found)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps")
    parser.add_argument("--batch", type=int, default=None, help="sequences per rank and step")
    parser.add_argument("--lengths", type=int, nargs="*", default=None, help="total lengths L for --mode sp")
    parser.add_argument("--no-single", action="store_true", help="--mode sp: skip the single-device baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="the JSON file (default: see the module docstring)")
    args = parser.parse_args()

    device = setup()
    size = dict(SIZES[args.size or ("gpu" if device.type == "cuda" else "cpu")])
    size.update({k: v for k, v in (("steps", args.steps), ("batch", args.batch)) if v is not None})
    result = (sequence_parallel if args.mode == "sp" else train)(args, size, device)

    if dist.get_rank() == 0:
        try:
            import triton
            triton_version = triton.__version__
        except ImportError:
            triton_version = None
        name = device_name(device)
        doc = {"mode": args.mode, "world": dist.get_world_size(), "backend": dist.get_backend(),
               "device": name, "device_kind": device.type, "cpu_count": os.cpu_count(),
               "threads_per_process": torch.get_num_threads(),
               "torch": torch.__version__, "triton": triton_version,
               "date": datetime.date.today().isoformat(), "sizes": size, **result}
        slug = "cpu" if device.type == "cpu" else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        base = pathlib.Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "book" / "data" / "distributed"
        path = pathlib.Path(args.out) if args.out else base / slug / f"{args.mode}-{dist.get_world_size()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
