"""A long-range task for chapter 5 and the S4 ablation run on it.

Symbols -> code:  L length (side²),  H channels,  N state size,  Δ -> dt.
Shapes: n sequences, L steps, one input feature per step.

The task (``pixel_digits``): scikit-learn's 8 x 8 digits (1797 images that
ship inside the package: nothing is downloaded), upsampled to side x side by
bilinear interpolation and read one pixel per step, so L = side². With
``permute=True`` the pixels are read in one fixed random order, the same for
every image, as in the permuted-MNIST benchmark of the HiPPO and S4 papers:
pixels that are neighbours in the image land anywhere in the sequence, and a
classifier has to combine inputs that lie at every distance up to L.

Two training-free probes look inside the initial system of one channel
(its state kernels Ā^l B̄, l < L): ``kernel_rank`` counts the independent
responses its N modes produce over L steps, which bounds what a learned C
can make of them, and ``recall_probe`` asks how much of a short pattern,
followed by thousands of steps of noise (``delayed_recall``), a linear
readout of the final state can still decode.

The ablation: ``ABLATION`` names the models, ``ablation_model`` builds one
at a parameter budget close to that of S4 with the same H, N and depth, and
``train_classifier`` trains it with AdamW and a one-cycle schedule (the SSM
parameters Δ, Λ, P, B at a smaller step and without weight decay, as S4
does), recording the test accuracy along the way. ``run_ablation`` does it
for several models and seeds; ``ablation_table`` and ``plot_ablation`` show
the result.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .diagonal import S4D, SequenceClassifier
from .discretize import discretize
from .hippo import _power_kernel
from .s4 import S4Classifier, dplr_dense

__all__ = [
    "pixel_digits",
    "ABLATION",
    "TRAIN_OVERRIDES",
    "ablation_model",
    "param_count",
    "train_classifier",
    "run_ablation",
    "final_accuracy",
    "ablation_table",
    "plot_ablation",
    "RNNClassifier",
    "state_kernels",
    "kernel_rank",
    "delayed_recall",
    "recall_probe",
    "window_probe",
]

#: Parameter names that get the SSM learning rate and no weight decay.
SSM_PARAMS = ("log_dt", "Lambda", "P", "B", "log_A_real", "A_imag")


def pixel_digits(side: int = 16, permute: bool = True, seed: int = 0, test_fraction: float = 0.2, hold: int = 1):
    """Digits read pixel by pixel: (X_train, y_train, X_test, y_test).

    X float32 (n, side² · hold, 1) in [0, 1], y int64 (n,) in 0..9. The
    images are upsampled from 8 x 8 to side x side (bilinear) and flattened
    row by row; ``permute`` then reads them in a fixed random order (drawn
    from ``seed`` + 1; the train/test split is drawn from ``seed``), and
    ``hold`` repeats each pixel for that many steps (a slower stream: the
    last steps then hold fewer distinct pixels).
    """
    from sklearn.datasets import load_digits

    for name, value in (("side", side), ("hold", hold)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"pixel_digits: {name} must be an int >= 1; got {value!r}")
    data = load_digits()
    X = torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0  # (1797, 1, 8, 8)
    if side != 8:
        X = F.interpolate(X, size=(side, side), mode="bilinear", align_corners=False)
    X = X.reshape(len(X), side * side, 1)  # (1797, L, 1), row-major
    if permute:
        X = X[:, torch.randperm(side * side, generator=torch.Generator().manual_seed(seed + 1))]
    X = X.repeat_interleave(hold, dim=1)  # (1797, side² · hold, 1)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return X[train], y[train], X[test], y[test]


class _ChannelsFirst(nn.Module):
    """(b, L, d) -> model((b, d, L)): lets chapter 6's SequenceClassifier read the task's layout."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.transpose(1, 2))


class RNNClassifier(nn.Module):
    """A torch.nn LSTM or GRU over (b, L, d_input); the last hidden state -> logits (b, n_classes)."""

    def __init__(self, d_input: int, hidden: int, n_classes: int, cell: str = "lstm"):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(d_input, hidden, batch_first=True)
        self.decoder = nn.Linear(hidden, n_classes)

    def forward(self, x):
        out, _ = self.rnn(x)  # (b, L, hidden)
        return self.decoder(out[:, -1])


def param_count(model: nn.Module) -> int:
    """Number of parameters (trainable or not: a frozen A still counts)."""
    return sum(p.numel() for p in model.parameters())


def _s4(init: str, frozen: bool):
    def make(L, H, N, depth, n_classes):
        model = S4Classifier(1, n_classes, H, N, L, depth=depth, init=init)
        if frozen:  # A = diag(Λ) - P P^* stays at its initial value; Δ, B, C̃, D still train
            for layer in model.layers:
                layer.Lambda.requires_grad_(False)
                layer.P.requires_grad_(False)
        return model
    return make


def _s4d(init: str):
    def make(L, H, N, depth, n_classes):
        # Per channel S4 stores four complex vectors of N (Λ, P, B, C̃: 8 N reals); S4D with state size
        # N' stores N'/2 modes of log_A_real, A_imag and a complex C (2 N' reals). N' = 4 N equalises them.
        return _ChannelsFirst(SequenceClassifier(lambda h: S4D(h, N=4 * N, init=init), H, depth, n_classes))
    return make


def _rnn(cell: str):
    def make(L, H, N, depth, n_classes):
        target = param_count(S4Classifier(1, n_classes, H, N, L, depth=depth))
        gates = 4 if cell == "lstm" else 3  # parameters: gates (h² + 2h + h·d) + decoder (h + 1) n_classes
        a, b = gates, 3 * gates + n_classes
        hidden = max(1, round((-b + math.sqrt(b * b + 4 * a * (target - n_classes))) / (2 * a)))
        return RNNClassifier(1, hidden, n_classes, cell)
    return make


#: The models of the ablation: name -> builder(L, H, N, depth, n_classes) -> nn.Module on (b, L, 1).
ABLATION = {
    "S4 LegS": _s4("legs", False),
    "S4 random": _s4("random", False),
    "S4 LegS, A frozen": _s4("legs", True),
    "S4 random, A frozen": _s4("random", True),
    "S4D-Lin": _s4d("lin"),
    "S4D-Inv": _s4d("inv"),
    "LSTM": _rnn("lstm"),
}


#: Training settings that differ from ``train_classifier``'s defaults. The LSTM diverges at the SSMs'
#: step of 3e-2 (its loss jumps back to chance within 100 steps) and trains at 1e-2.
TRAIN_OVERRIDES = {"LSTM": dict(lr=1e-2)}


def ablation_model(name: str, L: int, H: int = 32, N: int = 32, depth: int = 2, n_classes: int = 10) -> nn.Module:
    """One model of ``ABLATION`` for sequences of length L (input (b, L, 1) -> logits (b, n_classes))."""
    if name not in ABLATION:
        raise ValueError(f"ablation_model: unknown name={name!r}; valid: {', '.join(map(repr, ABLATION))}")
    return ABLATION[name](L, H, N, depth, n_classes)


@torch.no_grad()
def _accuracy(model, X, y, batch=512):
    model.eval()
    hits = sum((model(X[i:i + batch]).argmax(-1) == y[i:i + batch]).sum().item() for i in range(0, len(y), batch))
    model.train()
    return hits / len(y)


def train_classifier(model, data, steps: int = 250, batch: int = 64, lr: float = 3e-2, ssm_lr: float = 1e-3,
                     weight_decay: float = 0.01, eval_every: int = 25, seed: int = 0, device=None):
    """Train ``model`` on ``data`` = (X_train, y_train, X_test, y_test); return its history.

    AdamW with a one-cycle schedule over ``steps`` steps of ``batch`` random
    training sequences; parameters named in ``SSM_PARAMS`` (S4's Δ, Λ, P, B
    and S4D's A) at ``ssm_lr`` without weight decay, the rest at ``lr``.
    Returns {"step": [...], "acc": [...] (test accuracy after those steps),
    "loss": [...] (training loss per step), "seconds": training time}.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    X, y, Xt, yt = (t.to(device) for t in data)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ssm = [p for n, p in params if n.split(".")[-1] in SSM_PARAMS]
    rest = [p for n, p in params if n.split(".")[-1] not in SSM_PARAMS]
    groups = [dict(params=rest, lr=lr, weight_decay=weight_decay)]
    if ssm:
        groups.append(dict(params=ssm, lr=ssm_lr, weight_decay=0.0))
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    hist = {"step": [0], "acc": [_accuracy(model, Xt, yt)], "loss": []}
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(len(y), (batch,), generator=gen).to(device)
        loss = F.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        hist["loss"].append(loss.item())
        if step % eval_every == 0 or step == steps:
            hist["step"].append(step)
            hist["acc"].append(_accuracy(model, Xt, yt))
    hist["seconds"] = time.perf_counter() - t0
    return hist


def run_ablation(names, data, seeds=(0,), H: int = 32, N: int = 32, depth: int = 2, device=None, progress=None,
                 **train_kw):
    """Build and train each model of ``names`` once per seed; return one record per run.

    A record: {"name", "seed", "params", "model" (the trained model), "step",
    "acc", "loss", "seconds"}.
    The seed fixes the initialisation (torch.manual_seed) and the batches;
    ``TRAIN_OVERRIDES`` adjusts a model's settings over ``train_kw``.
    ``progress`` (optional) wraps the list of runs, e.g. ``tqdm``.
    """
    L = data[0].shape[1]
    runs = [(name, seed) for name in names for seed in seeds]
    records = []
    for name, seed in (progress(runs) if progress else runs):
        torch.manual_seed(seed)
        model = ablation_model(name, L, H, N, depth).to(device or "cpu")
        hist = train_classifier(model, data, seed=seed, device=device, **{**train_kw, **TRAIN_OVERRIDES.get(name, {})})
        records.append(dict(name=name, seed=seed, params=param_count(model), model=model, **hist))
    return records


def final_accuracy(records, name: str) -> list[float]:
    """The final test accuracy of every run of ``name``, in seed order."""
    return [r["acc"][-1] for r in sorted(records, key=lambda r: r["seed"]) if r["name"] == name]


def ablation_table(records) -> str:
    """A text table: model, parameters, final test accuracy per seed and its mean, training time."""
    names = list(dict.fromkeys(r["name"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    head = f"{'model':<22}{'params':>8}  " + "".join(f"{'seed ' + str(s):>8}" for s in seeds) + f"{'mean':>8}{'time':>8}"
    lines = [head, "-" * len(head)]
    for name in names:
        rs = {r["seed"]: r for r in records if r["name"] == name}
        accs = [rs[s]["acc"][-1] for s in seeds if s in rs]
        cells = "".join(f"{rs[s]['acc'][-1]:>8.3f}" if s in rs else f"{'':>8}" for s in seeds)
        secs = sum(r["seconds"] for r in rs.values()) / len(rs)
        lines.append(f"{name:<22}{next(iter(rs.values()))['params']:>8}  {cells}{sum(accs) / len(accs):>8.3f}{secs:>7.0f}s")
    return "\n".join(lines)


def plot_ablation(records, ax=None, title: str = ""):
    """Test accuracy against training steps: the mean over seeds per model, with the range shaded."""
    import matplotlib.pyplot as plt

    from .plots import PALETTE

    ax = ax or plt.subplots()[1]
    for i, name in enumerate(dict.fromkeys(r["name"] for r in records)):
        rs = [r for r in records if r["name"] == name]
        acc = torch.tensor([r["acc"] for r in rs])  # (seeds, evaluations)
        steps = rs[0]["step"]
        color = PALETTE[i % len(PALETTE)]
        ax.plot(steps, acc.mean(0), label=name, color=color)
        if len(rs) > 1:
            ax.fill_between(steps, acc.min(0).values, acc.max(0).values, color=color, alpha=0.15, lw=0)
    ax.axhline(0.1, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training steps")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="lower right")
    return ax


# ----------------------------------------------------------------------------
# Training-free probes of the initial system
# ----------------------------------------------------------------------------


def state_kernels(Lambda, P, B, dt, L: int) -> torch.Tensor:
    """Ā^l B̄ for l = 0..L-1, (L, N) complex128: the response of each state to a unit impulse.

    One channel: Lambda, P, B (N,) complex, dt a float; bilinear Ā, B̄ of
    A = diag(Λ) - P P^*. The state after inputs u_0..u_{L-1} is
    x_{L-1} = Σ_l (Ā^l B̄) u_{L-1-l}, and any kernel the channel can learn
    with its C is a combination Re(C Ā^l B̄) of these columns.
    """
    Lambda, P, B = (torch.as_tensor(x).to(torch.complex128) for x in (Lambda, P, B))
    Ab, Bb = discretize(dplr_dense(Lambda, P), B, torch.tensor(float(dt), dtype=torch.float64), method="bilinear")
    return _power_kernel(Ab, Bb, L)  # (L, N)


def kernel_rank(Lambda, P, B, dt, L: int, rtol: float = 1e-3) -> int:
    """Numerical rank of the channel's real responses [Re, Im](Ā^l B̄) over l < L.

    The number of singular values above ``rtol`` times the largest: how many
    independent kernels a learned C can combine. At most 2N (N for a real
    system such as LegS, whose modes come in conjugate pairs).
    """
    K = state_kernels(Lambda, P, B, dt, L)  # (L, N)
    s = torch.linalg.svdvals(torch.cat([K.real, K.imag], dim=1))  # (min(L, 2N),)
    return int((s > rtol * s[0]).sum())


def delayed_recall(n: int, bits: int = 4, width: int = 128, L: int = 4096, noise: float = 1.0, seed: int = 0):
    """A recall task at a distance of thousands of steps: (u (n, L) float64, b (n, bits) in {0, 1}).

    Each sequence starts with ``bits`` random bits, each held for ``width``
    steps as ±1, followed by white noise of standard deviation ``noise`` up
    to step L. At the end of the sequence the bits lie between
    L - bits·width and L steps in the past.
    """
    if bits * width > L:
        raise ValueError(f"delayed_recall: bits * width = {bits * width} must be <= L = {L}")
    gen = torch.Generator().manual_seed(seed)
    b = torch.randint(2, (n, bits), generator=gen)
    u = noise * torch.randn(n, L, generator=gen, dtype=torch.float64)
    u[:, : bits * width] = (2.0 * b - 1).repeat_interleave(width, dim=1)
    return u, b


def _ridge(A, Y, lam):
    """The ridge regression weights W = (AᵀA + lam I)⁻¹ AᵀY."""
    return torch.linalg.solve(A.T @ A + lam * torch.eye(A.shape[1], dtype=A.dtype), A.T @ Y)


def recall_probe(Lambda, P, B, dt, u, b, ridge: float = 1e-3, train_fraction: float = 2 / 3) -> float:
    """Fraction of the bits of ``delayed_recall`` decoded from the final state (chance: 0.5).

    The final state x_{L-1} of one frozen channel (2N real features, each
    standardised) is fitted to the bits by ridge regression on the first
    ``train_fraction`` of the sequences; the rest are the test set. This is
    the best a linear readout of that state can do: what the system forgot,
    no C can recover.
    """
    K = state_kernels(Lambda, P, B, dt, u.shape[1])  # (L, N)
    x = torch.einsum("ln,bl->bn", K, u.flip(-1).to(K.dtype))  # (n, N) final states
    F_ = torch.cat([x.real, x.imag], dim=1)
    F_ = (F_ - F_.mean(0)) / (F_.std(0) + 1e-300)  # (n, 2N)
    m = int(train_fraction * len(u))
    W = _ridge(F_[:m], (2.0 * b[:m] - 1).to(F_.dtype), ridge * m)  # (2N, bits), targets ±1
    return ((F_[m:] @ W > 0) == b[m:].bool()).double().mean().item()


def window_probe(data, k: int, ridge: float = 0.1) -> float:
    """Test accuracy of a linear classifier that sees only the last ``k`` steps of each sequence.

    data = (X_train, y_train, X_test, y_test) with X (n, L, 1). A ridge
    regression onto the one-hot labels (with a bias), in closed form. If a
    short window already classifies well, the task does not need a long
    memory, however long its sequences.
    """
    X, y, Xt, yt = data

    def features(X_):
        window = X_[:, -k:, 0].double()  # (n, k)
        return torch.cat([window, torch.ones(len(window), 1, dtype=window.dtype)], dim=1)

    W = _ridge(features(X), F.one_hot(y, int(y.max()) + 1).double(), ridge)  # (k + 1, classes)
    return (features(Xt) @ W).argmax(-1).eq(yt).double().mean().item()
