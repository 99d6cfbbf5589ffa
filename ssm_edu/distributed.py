"""Beyond one device: data, sharded and sequence parallelism for SSMs (the appendix "Beyond one GPU").

Symbols -> code:  R ranks -> world,  r -> rank,  the slice of every sequence
that rank r holds (steps t_r .. t_{r+1} - 1) -> its x, dt, B, C, ...,
S_r (the state slice r leaves behind from a zero start) -> local_state,
α_r = Σ_{t in slice r} Δ_t A (the slice's total log-decay) -> log_decay,
h_in_r (the true state entering slice r; the appendix's h^(r-1)) -> h_in,
G_r = ∂loss/∂h_in_r -> grad_in,  g_r = ∂loss/∂(what rank r passes on) -> grad_out.

Sequence parallelism. The recurrence is linear in the state, so the state
entering each slice obeys a recurrence over ranks (an exclusive scan):

    h_in_0 = 0,    h_in_{r+1} = exp(α_r) h_in_r + S_r                    (forward)

and each rank finishes its outputs with what that state adds:

    y_t = y_t^(0) + exp(Σ_{s = t_r .. t} Δ_s A) h_in_r C_t     for t in slice r

where y^(0) is the slice's output from a zero state (before the gate SiLU(z),
which multiplies both terms). The scan is chapter 8's state passing with one
"chunk" per rank. Its gradient runs the other way (the adjoint recurrence):

    g_{R-1} = 0,   g_{r-1} = G_r + exp(α_r) g_r,
    ∂loss/∂S_r = g_r,   ∂loss/∂α_r = Σ g_r ⊙ exp(α_r) h_in_r                (backward)

Two ways to run the exchange, both ``torch.autograd.Function``s whose
backward is the adjoint exchange (point-to-point messages carry no autograd
in PyTorch, and writing the adjoint out keeps it one state per message):

* ``"chain"``: rank r receives h_in_r from r - 1 and sends h_in_{r+1} to
  r + 1; the gradient goes back the same way. One state per message, R - 1
  messages one after the other.
* ``"allgather"``: every rank gathers every (S_q, α_q) and scans the ones
  before it locally; backward gathers every G_q. R - 1 states received per
  rank, in one collective.

Also here: the communication volume of data parallel (DDP), fully sharded
(FSDP2) and sequence-parallel training, counted from the shapes
(``ddp_bytes``, ``fsdp_bytes``, ``sequence_parallel_bytes``) and measured
(``CollectiveCounter`` records the collectives a run calls); and
``run_ranks``, a small harness that runs a function on R local gloo processes
(for the book's demonstrations and the tests; training uses ``torchrun``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import multiprocessing
import os
import pathlib
import pickle
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from .device import default_device
from .numerics import accumulation_dtype
from .selective import selective_scan
from .ssd import effective_dt, ssd

__all__ = [
    "EXCHANGES",
    "split_lengths",
    "rank_state_scan",
    "exchange_states",
    "ssd_sequence_parallel",
    "ssd_sliced",
    "selective_scan_sequence_parallel",
    "wire_bytes",
    "CollectiveCounter",
    "ddp_bytes",
    "fsdp_bytes",
    "sequence_parallel_bytes",
    "run_ranks",
    "start_forkserver",
    "rank_environment",
    "load_results",
    "training_table",
    "sequence_parallel_figure",
    "scaling_figure",
    "check_sequence_parallel",
    "check_training_step",
]

EXCHANGES = ("chain", "allgather")

# The JSON files benchmarks/train_distributed.py writes, one folder per device ("cpu", "nvidia-h100-80gb-hbm3").
DATA = pathlib.Path(__file__).resolve().parents[1] / "book" / "data" / "distributed"


def split_lengths(L: int, world: int) -> list[int]:
    """Contiguous slices of L steps over ``world`` ranks, as even as possible (the first L % R get one more)."""
    if world < 1 or L < world:
        raise ValueError(f"split_lengths: need 1 <= world <= L; got L = {L}, world = {world}")
    return [L // world + (r < L % world) for r in range(world)]


def rank_state_scan(states, log_decays, initial=None):
    """The exclusive scan over ranks, on one process: h_in_0 = initial (or 0), h_in_{r+1} = exp(α_r) h_in_r + S_r.

    states: R tensors S_r (any shape, e.g. (b, H, P, N)); log_decays: R tensors
    α_r broadcastable against them (e.g. (b, H, 1, 1)). Returns (h_in, final):
    h_in stacks the R entering states (R, ...), final = h_in_R.
    """
    h = torch.zeros_like(states[0]) if initial is None else initial
    entering = []
    for S, a in zip(states, log_decays):
        entering.append(h)
        h = torch.exp(a) * h + S
    return torch.stack(entering), h


def _peers(group):
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    glob = (lambda r: r) if group is None else (lambda r: dist.get_global_rank(group, r))
    return rank, world, glob


def _zeros(like):
    """Contiguous zeros: collectives need contiguous buffers, and a gradient may arrive expanded (stride 0)."""
    return torch.zeros(like.shape, dtype=like.dtype, device=like.device)


class _ChainExchange(torch.autograd.Function):
    """Forward: h_in_r from rank r - 1, exp(α_r) h_in_r + S_r on to rank r + 1.

    Backward: g_r from rank r + 1, G_r + exp(α_r) g_r on to rank r - 1.
    """

    @staticmethod
    def forward(ctx, S, alpha, group):
        rank, world, glob = _peers(group)
        h_in = _zeros(S)
        if rank > 0:
            dist.recv(h_in, src=glob(rank - 1), group=group)
        if rank < world - 1:
            dist.send((torch.exp(alpha) * h_in + S).contiguous(), dst=glob(rank + 1), group=group)
        ctx.group = group
        ctx.save_for_backward(alpha, h_in)
        return h_in

    @staticmethod
    def backward(ctx, grad_in):
        alpha, h_in = ctx.saved_tensors
        rank, world, glob = _peers(ctx.group)
        grad_out = _zeros(grad_in)  # g_r: zero on the last rank, nothing comes after it
        if rank < world - 1:
            dist.recv(grad_out, src=glob(rank + 1), group=ctx.group)
        if rank > 0:
            dist.send((grad_in + torch.exp(alpha) * grad_out).contiguous(), dst=glob(rank - 1), group=ctx.group)
        grad_alpha = (grad_out * torch.exp(alpha) * h_in).sum_to_size(alpha.shape)
        return grad_out, grad_alpha, None


class _GatherExchange(torch.autograd.Function):
    """Forward: all-gather every (S_q, α_q), scan the ranks q < r locally.

    Backward: all-gather every G_q, run the adjoint scan of the ranks q > r locally.
    """

    @staticmethod
    def forward(ctx, S, alpha, group):
        rank, world, _ = _peers(group)
        states = [_zeros(S) for _ in range(world)]
        alphas = [_zeros(alpha) for _ in range(world)]
        dist.all_gather(states, S.contiguous(), group=group)
        dist.all_gather(alphas, alpha.contiguous(), group=group)
        h_in = rank_state_scan(states[:rank], alphas[:rank])[1] if rank else _zeros(S)
        ctx.group = group
        ctx.save_for_backward(h_in, *alphas)
        return h_in

    @staticmethod
    def backward(ctx, grad_in):
        h_in, *alphas = ctx.saved_tensors
        rank, world, _ = _peers(ctx.group)
        grads = [_zeros(grad_in) for _ in range(world)]
        dist.all_gather(grads, grad_in.contiguous(), group=ctx.group)
        grad_out = _zeros(grad_in)
        for q in range(world - 1, rank, -1):  # g_r = G_{r+1} + exp(α_{r+1}) g_{r+1}, from g_{R-1} = 0 down
            grad_out = grads[q] + torch.exp(alphas[q]) * grad_out
        grad_alpha = (grad_out * torch.exp(alphas[rank]) * h_in).sum_to_size(alphas[rank].shape)
        return grad_out, grad_alpha, None


def exchange_states(local_state, log_decay, exchange="chain", group=None):
    """The state entering this rank's slice, h_in_r, from every rank's (S_q, α_q); differentiable.

    local_state S_r (any shape, the same on every rank), log_decay α_r
    broadcastable against it. ``exchange``: ``"chain"`` (send/recv along the
    ranks) or ``"allgather"`` (one all-gather, then a local scan). Rank 0 gets
    zeros. Call it on every rank of ``group`` (default: the world).
    """
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {EXCHANGES}; got {exchange!r}")
    fn = _ChainExchange if exchange == "chain" else _GatherExchange
    return fn.apply(local_state, log_decay, group)


def _check_exchange(op, exchange):
    if exchange not in EXCHANGES:
        raise ValueError(f"{op}: exchange must be one of {EXCHANGES}; got {exchange!r}")
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{op}: needs an initialised process group (torchrun, or ssm_edu.distributed.run_ranks)")


def _ssd_slice(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states, impl):
    """One slice from a zero state (or ``initial_states``): y^(0) (b, L_r, H, P), S_r (b, H, P, N) and the
    cumulative log-decay from the slice's start (b, L_r, H), in the accumulation dtype."""
    y0, S = ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                initial_states=initial_states, return_final_states=True, impl=impl)
    work = accumulation_dtype(x.dtype)
    bias = None if dt_bias is None else dt_bias.to(work)
    a = effective_dt(dt.to(work), bias, dt_softplus) * A.to(work)  # (b, L_r, H) log-decays
    return y0.to(work), S.to(work), torch.cumsum(a, dim=1)


def _ssd_finish(y0, C, z, a_cum, h_in):
    """y_t = y_t^(0) + exp(a_cum_t) h_in C_t (⊙ SiLU(z_t)): what the state entering the slice adds."""
    b, L, H, P = y0.shape
    G = C.shape[2]  # head h = g (H / G) + k reads group g: no copy of C per head
    y_in = torch.einsum("blgn,bgkpn,blgk->blgkp", C.to(y0.dtype), h_in.unflatten(1, (G, H // G)),
                        torch.exp(a_cum).unflatten(2, (G, H // G))).reshape(b, L, H, P)
    return y0 + (y_in if z is None else y_in * F.silu(z.to(y0.dtype)))


def ssd_sequence_parallel(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
                          initial_states=None, return_final_states=False, exchange="chain", group=None, impl="auto"):
    """``ssd`` on a sequence split over the ranks of ``group``: each rank passes its own contiguous slice.

    Rank r holds steps t_r .. t_{r+1} - 1 (ranks in sequence order; slices may
    differ in length): x (b, L_r, H, P), dt (b, L_r, H), B, C (b, L_r, G, N),
    z (b, L_r, H, P); A, D, dt_bias are the same on every rank, and
    ``initial_states`` (b, H, P, N) is read on rank 0 only. Returns this rank's
    y (b, L_r, H, P), equal to the matching rows of single-device ``ssd`` on
    the whole sequence, and with ``return_final_states`` the state after this
    rank's slice (on the last rank: the final state of the whole sequence).

    Three steps: ``ssd`` on the slice from a zero state (rank 0: from
    ``initial_states``), giving y^(0) and S_r; ``exchange_states`` for h_in_r;
    then y += exp(cumulative log-decay) h_in_r C_t (⊙ SiLU(z)). Differentiable;
    the backward of the exchange is the adjoint exchange (module docstring).
    """
    op = "ssd_sequence_parallel"
    _check_exchange(op, exchange)
    rank = dist.get_rank(group)
    y0, S, a_cum = _ssd_slice(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus,
                              initial_states if rank == 0 else None, impl)
    alpha = a_cum[:, -1, :, None, None]  # α_r (b, H, 1, 1)
    h_in = exchange_states(S, alpha, exchange, group)  # (b, H, P, N)
    y = _ssd_finish(y0, C, z, a_cum, h_in).to(x.dtype)
    if return_final_states:
        return y, (torch.exp(alpha) * h_in + S).to(x.dtype)
    return y


def ssd_sliced(x, dt, A, B, C, lengths, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
               initial_states=None, return_final_states=False, impl="auto"):
    """The sequence-parallel algorithm on one process: the whole sequence cut into slices of ``lengths``.

    The same arguments as ``ssd`` (whole sequence) plus ``lengths`` (summing
    to L). Each slice is computed from a zero state, ``rank_state_scan``
    passes the states between them, and each slice is finished: what R ranks
    do, with the exchange replaced by a loop. Equal to ``ssd``.
    """
    if sum(lengths) != x.shape[1] or min(lengths) < 1:
        raise ValueError(f"ssd_sliced: lengths must be >= 1 and sum to L = {x.shape[1]}; got {list(lengths)}")
    cuts = lambda t: torch.split(t, list(lengths), dim=1) if t is not None else [None] * len(lengths)  # noqa: E731
    parts = [_ssd_slice(xs, ds, A, Bs, Cs, chunk_size, D, zs, dt_bias, dt_softplus, initial_states if r == 0 else None,
                        impl)
             for r, (xs, ds, Bs, Cs, zs) in enumerate(zip(*map(cuts, (x, dt, B, C, z))))]
    h_in, final = rank_state_scan([S for _, S, _ in parts], [a[:, -1, :, None, None] for _, _, a in parts])
    y = torch.cat([_ssd_finish(y0, Cs, zs, a, h) for (y0, _, a), Cs, zs, h in zip(parts, cuts(C), cuts(z), h_in)],
                  dim=1).to(x.dtype)
    return (y, final.to(x.dtype)) if return_final_states else y


def selective_scan_sequence_parallel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                     return_last_state=False, exchange="chain", group=None, impl="auto"):
    """``selective_scan`` (Mamba-1) on a sequence split over the ranks: each rank passes its own slice.

    u, delta, z (b, D, L_r), B, C (b, N, L_r) or (b, G, N, L_r) on rank r;
    A (D, N), D, delta_bias the same on every rank. Returns this rank's
    y (b, D, L_r) [and the state after its slice (b, D, N)]. The decay is
    per (channel, state) entry, so α_r is (b, D, N); the correction
    materialises exp(cumulative Δ A) (b, D, L_r, N), as the vectorized scan does.
    """
    op = "selective_scan_sequence_parallel"
    _check_exchange(op, exchange)
    y0, S = selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                           return_last_state=True, impl=impl)
    work = accumulation_dtype(u.dtype)
    dt = delta.to(work) + (0 if delta_bias is None else delta_bias.to(work)[:, None])  # (b, D, L_r)
    dt = F.softplus(dt) if delta_softplus else dt
    a_cum = torch.cumsum(dt[..., None] * A.to(work)[:, None, :], dim=2)  # (b, D, L_r, N)
    alpha = a_cum[:, :, -1]  # α_r (b, D, N)
    h_in = exchange_states(S.to(work), alpha, exchange, group)  # (b, D, N)
    Cd = C.to(work)
    Cd = Cd[:, None] if Cd.dim() == 3 else Cd.repeat_interleave(u.shape[1] // Cd.shape[1], dim=1)  # (b, D or 1, N, L_r)
    y_in = torch.einsum("bdln,bdn,bdnl->bdl", torch.exp(a_cum), h_in, Cd)
    if z is not None:
        y_in = y_in * F.silu(z.to(work))
    y = (y0.to(work) + y_in).to(u.dtype)
    if return_last_state:
        return y, (torch.exp(alpha) * h_in + S.to(work)).to(u.dtype)
    return y


# ---------------------------------------------------------------------- communication: measured


# What one call of each collective moves, per rank, with the standard (ring or
# direct) algorithms, in units of its payload n: all-reduce sends and receives
# 2 (R - 1) / R n (a reduce-scatter, then an all-gather); all-gather (payload:
# the gathered output), reduce-scatter and all-to-all (payload: the input)
# (R - 1) / R n; a send n (the receiver counts nothing sent).
_PAYLOAD = {  # c10d op -> (argument holding the payload, bytes sent per payload byte as a function of R)
    "allreduce_": (0, lambda R: 2 * (R - 1) / R),
    "allgather_": (0, lambda R: (R - 1) / R),
    "_allgather_base_": (0, lambda R: (R - 1) / R),
    "allgather_into_tensor_coalesced_": (0, lambda R: (R - 1) / R),
    "reduce_scatter_": (1, lambda R: (R - 1) / R),
    "_reduce_scatter_base_": (1, lambda R: (R - 1) / R),
    "reduce_scatter_tensor_coalesced_": (1, lambda R: (R - 1) / R),
    "alltoall_": (1, lambda R: (R - 1) / R),
    "alltoall_base_": (1, lambda R: (R - 1) / R),
    "send": (0, lambda R: 1.0),
    "recv_": (0, lambda R: 0.0),
    "broadcast_": (0, lambda R: 1.0),
}


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(o) for o in obj)
    return 0


def wire_bytes(op: str, payload: int, world: int) -> float:
    """Bytes one rank sends for one call of collective ``op`` (a c10d op name) with ``payload`` bytes."""
    return _PAYLOAD[op][1](world) * payload


class CollectiveCounter(TorchDispatchMode):
    """Record every collective this process calls while the mode is on: ``(op, payload bytes)``.

    Every ``torch.distributed`` collective (and DDP's and FSDP's, called from
    C++) reaches PyTorch's dispatcher as a ``c10d`` op; this mode sees them
    there, whatever the backend. ``calls`` lists (op, payload) in order;
    ``sent()`` turns them into the bytes this rank sends (``wire_bytes``).
    """

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        ns, name = func.namespace, func.overloadpacket.__name__
        if ns == "c10d" and name in _PAYLOAD:
            self.calls.append((name, _nbytes(args[_PAYLOAD[name][0]])))
        elif ns == "c10d" and name not in ("barrier", "monitored_barrier_"):
            self.calls.append((name, -1))  # a collective this table does not know: shown, never silently dropped
        return func(*args, **(kwargs or {}))

    def sent(self, world: int) -> float:
        """Bytes this rank sent, summed over the recorded calls."""
        unknown = [op for op, n in self.calls if n < 0]
        if unknown:
            raise ValueError(f"CollectiveCounter: no byte count for the collectives {sorted(set(unknown))}")
        return sum(wire_bytes(op, n, world) for op, n in self.calls)


# ---------------------------------------------------------------------- communication: counted


def ddp_bytes(model: torch.nn.Module, world: int, grad_bytes: int = 4) -> float:
    """Bytes each rank sends per step under DDP: one all-reduce of every gradient, 2 (R - 1) / R Ψ."""
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 2 * (world - 1) / world * numel * grad_bytes


def _sharded_numel(params, world: int) -> int:
    """FSDP2 shards each parameter on dim 0, padded to a multiple of R: the all-gathered size."""
    return sum(math.ceil(p.shape[0] / world) * world * p[0].numel() if p.dim() else world for p in params)


def fsdp_bytes(model: torch.nn.Module, world: int, children: str = "blocks", param_bytes: int = 4,
               grad_bytes: int = 4, reshard_after_forward: bool = True) -> float:
    """Bytes each rank sends per step under FSDP2 with ``fully_shard`` on each of ``model.<children>`` and the root.

    Each sharded unit is all-gathered before its forward and, when it is
    resharded after forward, again before its backward; its gradients are
    reduce-scattered once. The root's parameters stay gathered between its
    forward and backward (FSDP2 does not reshard the root). Every
    collective moves (R - 1) / R of the gathered size Ψ_u, so with the
    blocks holding nearly everything: 3 (R - 1) / R Ψ, 1.5 times DDP.
    """
    units = [list(m.parameters()) for m in getattr(model, children)]
    in_units = {id(p) for u in units for p in u}
    root = [p for p in model.parameters() if id(p) not in in_units]
    f = (world - 1) / world
    gathers = _sharded_numel(root, world) + sum((2 if reshard_after_forward else 1) * _sharded_numel(u, world)
                                                for u in units)
    scatters = _sharded_numel(root, world) + sum(_sharded_numel(u, world) for u in units)
    return f * (gathers * param_bytes + scatters * grad_bytes)


def sequence_parallel_bytes(exchange: str, world: int, rank: int, state_numel: int, decay_numel: int,
                            elem_bytes: int = 4) -> float:
    """Bytes rank ``rank`` sends for one forward and backward of one sequence-parallel scan.

    ``"chain"``: one state forward (all but the last rank) and one gradient
    backward (all but the first). ``"allgather"``: forward all-gathers the
    states and the log-decays, backward the gradients: (R - 1) (2 states +
    1 decay) per rank, independent of the rank.
    """
    if exchange == "chain":
        return ((rank < world - 1) + (rank > 0)) * state_numel * elem_bytes
    if exchange == "allgather":
        return (world - 1) * (2 * state_numel + decay_numel) * elem_bytes
    raise ValueError(f"sequence_parallel_bytes: exchange must be one of {EXCHANGES}; got {exchange!r}")


# ---------------------------------------------------------------------- a harness for demonstrations and tests


# What the forkserver imports once for all the processes it forks. torch._dynamo
# is imported lazily by the first call of many torch functions (several seconds);
# the FSDP and DDP modules by check_training_step.
_PRELOAD = ["torch", "torch._dynamo", "torch.distributed.fsdp", "torch.nn.parallel", "ssm_edu.distributed",
            "ssm_edu.lm", "ssm_edu.mamba2"]

# run_ranks's processes run on CPU, with gloo, on every machine, and never see a GPU.
# On a GPU machine a forked process cannot use CUDA once its parent has initialised
# the CUDA driver, and torch.cuda.is_available() does that (cudaGetDeviceCount calls
# cuInit; ssm_edu calls it at import, so the forkserver does too). PyTorch touches
# CUDA even for CPU tensors where a GPU is visible (AdamW's step asks whether a CUDA
# graph is being captured; FSDP2's default mesh is on the GPU): such a process fails
# with "CUDA error: initialization error". With CUDA_VISIBLE_DEVICES empty from the
# start, the driver finds no device in the forkserver and in every process of it.
_HIDE_GPUS = {"CUDA_VISIBLE_DEVICES": ""}
_FORKSERVER = {"pid": None}  # the forkserver this module started (with the GPUs hidden), once it has


@contextlib.contextmanager
def _environment(values):
    """Set environment variables for what starts inside the block (child processes inherit them); then restore."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _rank_main(rank, world, store_path, out_dir, fn, args, timeout):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    store = dist.FileStore(store_path, world)
    try:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout))
    except RuntimeError as err:  # the meeting itself failed, before fn ran: run_ranks may start again
        with open(os.path.join(out_dir, f"{rank}.meeting"), "w") as f:
            f.write(str(err))
        raise
    try:
        result = fn(*args)
        with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
    finally:
        dist.destroy_process_group()


def start_forkserver() -> bool:
    """Start the forkserver that ``run_ranks`` forks its processes from, if it is not running; False without one.

    It imports torch and ssm_edu in the background (several seconds): called
    early, that overlaps with this process's own work. ``run_ranks`` calls it.
    It starts with the GPUs hidden (``CUDA_VISIBLE_DEVICES=""``), so that its
    processes run on CPU whatever the machine. False also when this process
    already runs a forkserver that this module did not start (its imports
    and environment are unknown): ``run_ranks`` then spawns its processes.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows: run_ranks spawns instead
        return False
    from multiprocessing import forkserver

    running = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if running is not None and running != _FORKSERVER["pid"]:
        return False
    multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
    with _environment(_HIDE_GPUS):  # the server inherits the environment when it starts (or restarts) here
        forkserver.ensure_running()  # returns at once; the server imports _PRELOAD before it accepts a request
    _FORKSERVER["pid"] = getattr(forkserver._forkserver, "_forkserver_pid", None)
    return True


def rank_environment() -> dict:
    """What a process of ``run_ranks`` sees: its rank and backend, and no GPU (``default_device()`` is the CPU)."""
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "backend": dist.get_backend(),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cuda available": torch.cuda.is_available(), "default device": str(default_device())}


def run_ranks(fn, world: int, *args, timeout: float = 60.0) -> list:
    """Run ``fn(*args)`` on ``world`` local processes joined by a gloo process group; return the results by rank.

    A harness for the book's demonstrations and the tests, not a launcher for
    training (that is ``torchrun``'s job). ``fn`` must be importable (defined
    in a module) and return something picklable. The processes start from a
    forkserver that has imported torch and ssm_edu once (then a start costs
    a fork, not an import), meet through a ``FileStore`` in a fresh temporary
    directory (no port, so parallel runs never collide) and have ``timeout``
    seconds for everything: every collective times out, and a run that is
    still going at the deadline is killed and raises ``TimeoutError``.
    A rank that raises stops the others and re-raises its error here. Processes that
    fail to meet (gloo's connections between them, before ``fn`` runs) are started
    again, up to ``MEETING_TRIES`` times in all, with a warning.
    The processes see no GPU (``CUDA_VISIBLE_DEVICES=""``): they compute on
    CPU on every machine, and a GPU machine gives the same results as a laptop.
    """
    return _retry_meetings(lambda tmp: _run_once(fn, world, args, timeout, tmp))


# How many times run_ranks starts its processes when they fail to meet. gloo connects every pair of processes
# over TCP on 127.0.0.1 after the FileStore has given them each other's addresses; on a loaded machine (a CI
# run of two test workers with a book build beside them, 2 cores) that connection was once closed by the
# peer ("Gloo connectFullMesh failed ... Connection closed by peer"), before any rank ran fn. A failure
# to meet is retried with fresh processes and a fresh store; an error of fn itself never is.
MEETING_TRIES = 3


def _retry_meetings(run_once, tries=None):
    """``run_once(tmp)`` in a fresh temporary directory, again while it fails with a rank that could not join the
    process group (a ``<rank>.meeting`` file in ``tmp``, written by ``_rank_main``), at most ``tries`` times."""
    tries = MEETING_TRIES if tries is None else tries
    for attempt in range(1, tries + 1):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return run_once(tmp)
            except Exception:
                met = not any(name.endswith(".meeting") for name in os.listdir(tmp))
                if met or attempt == tries:
                    raise
        warnings.warn(f"run_ranks: the processes failed to meet (gloo's connections); starting again "
                      f"({attempt} of {tries - 1} retries)", RuntimeWarning, stacklevel=3)


def _run_once(fn, world, args, timeout, tmp):
    """One start of ``run_ranks``'s processes, meeting through a FileStore in ``tmp``: the results by rank."""
    import torch.multiprocessing as mp

    method = "forkserver" if start_forkserver() else "spawn"
    with _environment(_HIDE_GPUS):  # a spawned process (or a forkserver restarted here) inherits it
        ctx = mp.start_processes(_rank_main, args=(world, os.path.join(tmp, "store"), tmp, fn, args, timeout),
                                 nprocs=world, join=False, start_method=method)
    if method == "forkserver":  # started (or restarted) here, with the GPUs hidden: it is this module's
        from multiprocessing import forkserver

        _FORKSERVER["pid"] = getattr(forkserver._forkserver, "_forkserver_pid", None)
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.01, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"run_ranks: {getattr(fn, '__name__', fn)} on {world} ranks did not finish "
                                   f"within {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(timeout=5)
    results = []
    for r in range(world):
        with open(os.path.join(tmp, f"{r}.pkl"), "rb") as f:
            results.append(pickle.load(f))
    return results


def load_results(device: str | None = None, mode: str | None = None) -> list[dict]:
    """The logged torchrun runs (``benchmarks/train_distributed.py``), sorted by device, mode and R.

    ``device``: a folder name under ``book/data/distributed/`` ("cpu", or a
    GPU's name in lower case with dashes); ``mode``: "ddp", "fsdp" or "sp".
    A copy of ssm_edu installed outside the repository (Colab) has no data
    folder: the list is then empty.
    """
    if not DATA.is_dir():
        return []
    docs = []
    for path in sorted(DATA.glob("*/*.json")):
        doc = json.loads(path.read_text())
        if (device is None or path.parent.name == device) and (mode is None or doc["mode"] == mode):
            docs.append(doc | {"folder": path.parent.name})
    return sorted(docs, key=lambda d: (d["folder"], d["mode"], d["world"]))


# ---------------------------------------------------------------------- checks (run on every rank by run_ranks)


def _sp_problem(op, L, seed, dtype):
    """Random inputs of ``op`` on the whole sequence, the same on every rank: (kwargs, the sequence axis of each)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    if op == "ssd":
        b, H, P, N, G = 2, 4, 3, 5, 2
        kw = dict(x=r(b, L, H, P), dt=r(b, L, H), A=-0.5 - torch.rand(H, generator=g, dtype=dtype),
                  B=r(b, L, G, N), C=r(b, L, G, N), D=r(H), z=r(b, L, H, P), dt_bias=r(H), initial_states=r(b, H, P, N))
        return kw, dict(x=1, dt=1, B=1, C=1, z=1)
    b, Dc, N, G = 2, 4, 5, 2
    kw = dict(u=r(b, Dc, L), delta=r(b, Dc, L), A=-0.5 - torch.rand(Dc, N, generator=g, dtype=dtype),
              B=r(b, G, N, L), C=r(b, G, N, L), D=r(Dc), z=r(b, Dc, L), delta_bias=r(Dc))
    return kw, dict(u=2, delta=2, B=3, C=3, z=2)


def check_sequence_parallel(op="ssd", exchange="chain", lengths=None, L=37, seed=0, dtype=torch.float64,
                            plain_sum=False, impl="vectorized", device="cpu") -> dict:
    """On every rank: the sequence-parallel ``op`` ("ssd" or "selective_scan") against the single-device one.

    Every rank draws the same whole-sequence problem, computes the
    single-device result and gradients (of a random weighting of y and of the
    final state), then runs its slice (``lengths``, default ``split_lengths``)
    through the sequence-parallel version. Returns this rank's relative errors
    (its slice of y, of each sequence input's gradient; the gradients of the
    shared parameters summed over ranks; the final state on the last rank),
    and the bytes it sent for the exchange, measured and counted. ``plain_sum``
    makes the loss y.sum() instead (no final-state term). ``impl`` and
    ``device``: those of both computations (a GPU run checks the kernels).
    """
    from .numerics import rel_error

    rank, world = dist.get_rank(), dist.get_world_size()
    lengths = split_lengths(L, world) if lengths is None else list(lengths)
    L = sum(lengths)
    kw, seq = _sp_problem(op, L, seed, dtype)
    kw = {k: t.to(device).requires_grad_(True) for k, t in kw.items()}
    single, parallel = ((ssd, ssd_sequence_parallel) if op == "ssd"
                        else (selective_scan, selective_scan_sequence_parallel))
    flags = (dict(chunk_size=16, dt_softplus=True, return_final_states=True) if op == "ssd"
             else dict(delta_softplus=True, return_last_state=True))
    y, final = single(**kw, **flags, impl=impl)
    ax = seq["x" if op == "ssd" else "u"]
    if plain_sum:  # loss = y.sum(): the gradients arrive expanded (stride 0), as in a benchmark's y.sum().backward()
        w, w_final = torch.ones(()).to(y).expand_as(y), None
    else:
        g = torch.Generator().manual_seed(seed + 1)  # the same weights on every rank, whatever its global RNG
        w, w_final = (torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) for t in (y, final))
    ((w * y).sum() + (0 if plain_sum else (w_final * final).sum())).backward()
    ref = {k: t.grad for k, t in kw.items()}

    start = sum(lengths[:rank])
    mine = {k: (t.detach().narrow(seq[k], start, lengths[rank]) if k in seq else t.detach()).requires_grad_(True)
            for k, t in kw.items()}
    with CollectiveCounter() as counter:
        y_r, final_r = parallel(**mine, **flags, exchange=exchange, impl=impl)
        loss = (w.narrow(ax, start, lengths[rank]) * y_r).sum()
        if rank == world - 1 and not plain_sum:
            loss = loss + (w_final * final_r).sum()
        loss.backward()
    out = {"y": rel_error(y_r, y.narrow(ax, start, lengths[rank]))}
    if rank == world - 1:
        out["final state"] = rel_error(final_r, final)
    for k, t in mine.items():
        grad = t.grad if t.grad is not None else torch.zeros_like(t)
        if k in seq:
            out[f"grad {k}"] = rel_error(grad, ref[k].narrow(seq[k], start, lengths[rank]))
        else:  # shared by the ranks: the gradient is the sum of theirs (data parallelism's all-reduce)
            dist.all_reduce(grad)
            out[f"grad {k}"] = rel_error(grad, ref[k])
    state = final_r.numel()
    decay = state // (kw["x"].shape[3] * kw["B"].shape[3]) if op == "ssd" else state
    out["measured bytes"] = counter.sent(world)
    out["counted bytes"] = sequence_parallel_bytes(exchange, world, rank, state, decay,
                                                   torch.empty(0, dtype=accumulation_dtype(dtype)).element_size())
    return out


def check_training_step(mode="fsdp", seed=0, batch_per_rank=2, L=24, lr=1e-2) -> dict:
    """On every rank: one AdamW step of a small Mamba-2 language model under DDP or FSDP2 against one process.

    The reference trains a copy on the whole batch (every rank's rows) on
    this process; the distributed model sees only this rank's rows, and DDP
    or FSDP2 averages the gradients. In float64, so that the two must agree
    to rounding. On CPU, with gloo (FSDP2 is given a CPU device mesh: its
    default is the GPU's wherever one is visible). Returns the largest
    relative error over the parameters' gradients and over the parameters
    after the step, and the bytes this rank sent in forward and backward,
    measured and counted.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from .lm import SequenceModel
    from .mamba2 import mamba2_block
    from .numerics import rel_error

    rank, world = dist.get_rank(), dist.get_world_size()
    vocab = 32

    def make():
        torch.manual_seed(seed)
        block = mamba2_block(d_state=8, headdim=16, chunk_size=8, impl="vectorized")
        return SequenceModel(vocab, 32, 2, block).double()

    def loss_of(model, x, y):
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    tokens = torch.randint(vocab, (world * batch_per_rank, L + 1), generator=torch.Generator().manual_seed(seed + 1))
    ref = make()
    opt = torch.optim.AdamW(ref.parameters(), lr=lr)
    loss_of(ref, tokens[:, :-1], tokens[:, 1:]).backward()
    ref_grads = [p.grad.clone() for p in ref.parameters()]
    opt.step()

    model = make()
    if mode == "ddp":
        counted = ddp_bytes(model, world, grad_bytes=8)
        model = DistributedDataParallel(model)
    elif mode == "fsdp":
        counted = fsdp_bytes(model, world, param_bytes=8, grad_bytes=8)
        mesh = init_device_mesh("cpu", (world,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    else:
        raise ValueError(f"check_training_step: mode must be 'ddp' or 'fsdp'; got {mode!r}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    mine = tokens[rank * batch_per_rank:(rank + 1) * batch_per_rank]
    with CollectiveCounter() as counter:
        loss_of(model, mine[:, :-1], mine[:, 1:]).backward()
    grads = [p.grad for p in model.parameters()]
    opt.step()

    def full(t):  # an FSDP2 parameter or gradient is a sharded DTensor: gather it (a collective: every rank calls it)
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    return {"grad": max(rel_error(full(g), r) for g, r in zip(grads, ref_grads)),
            "parameters after the step": max(rel_error(full(p.detach()), r.detach())
                                             for p, r in zip(model.parameters(), ref.parameters())),
            "measured bytes": counter.sent(world), "counted bytes": counted}


# ---------------------------------------------------------------------- the appendix's tables and figures


def _nan(v):
    return float("nan") if v is None else v


def training_table(runs: list[dict]) -> str:
    """A markdown table of logged DDP / FSDP2 runs: tokens/s, the last loss, bytes sent per rank (measured, counted)."""
    rows = ["| scheme | R | tokens/s (median of steps) | loss after the last step | "
            "bytes sent per rank per step: measured | counted |", "|---|---:|---:|---:|---:|---:|"]
    for d in runs:
        sent = d["bytes_sent_per_rank"]
        rows.append(f"| {d['mode'].upper()} | {d['world']} | {d['tokens_per_s']:,.0f} | {d['steps'][-1]['loss']:.3f} | "
                    f"{max(sent['measured']):,.0f} | {sent['counted']:,.0f} |")
    return "\n".join(rows)


def sequence_parallel_figure(runs: list[dict], ax=None, exchanges=EXCHANGES):
    """Forward + backward time of logged ``sp`` runs against the total length, one line per R and exchange.

    The dotted line is single-device ``ssd`` on the whole sequence: each run
    measures it once on rank 0; the figure shows the median over the runs.
    """
    import matplotlib.pyplot as plt

    from . import plots

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    Ls = [row["L"] for row in runs[0]["rows"]]
    for i, d in enumerate(runs):
        for exchange, style in zip(exchanges, ("-o", "--s")):
            ax.loglog([row["L"] for row in d["rows"]], [_nan(row[f"{exchange}_seconds"]) for row in d["rows"]], style,
                      color=plots.PALETTE[i % len(plots.PALETTE)], label=f"R = {d['world']}, {exchange}")
    single = [sorted(_nan(d["rows"][i]["single_device_seconds"]) for d in runs)[len(runs) // 2]
              for i in range(len(Ls))]
    ax.loglog(Ls, single, "k:", lw=2, label="one device, whole sequence")
    ax.set_xlabel("total sequence length L [tokens]")
    ax.set_ylabel("forward + backward [s]")
    d = runs[0]
    ax.set_title(f"Sequence-parallel SSD, batch 1, H {d['shape']['H']}, P {d['shape']['P']}, N {d['shape']['N']}\n"
                 f"{d['device']}, {d['backend']}, torch {d['torch']}, {d['date']}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return ax


def scaling_figure(runs: list[dict], ax=None):
    """Tokens/s of the whole group against R, for logged DDP and FSDP2 runs of one device."""
    import matplotlib.pyplot as plt

    from . import plots

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for i, mode in enumerate(("ddp", "fsdp")):
        mine = [d for d in runs if d["mode"] == mode]
        ax.plot([d["world"] for d in mine], [d["tokens_per_s"] for d in mine], "-o", color=plots.PALETTE[i],
                label=mode.upper())
    d = runs[0]
    ax.set_xticks(sorted({r["world"] for r in runs}))
    ax.set_xlabel("devices R")
    ax.set_ylabel("tokens/s (whole group)")
    ax.set_title(f"Mamba-2 LM, d_model {d['sizes']['d_model']}, {d['sizes']['n_layers']} layers, "
                 f"{d['sizes']['batch']} x {d['sizes']['seq_len']} tokens per device\n"
                 f"{d['device']}, {d['backend']}, torch {d['torch']}, {d['date']}", fontsize=9)
    ax.legend()
    return ax
