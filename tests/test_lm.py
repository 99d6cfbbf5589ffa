"""ssm_edu.lm: the block protocol, the model, training, evaluation and generation."""

import math

import pytest
import torch
import torch.nn as nn

from ssm_edu.lm import History, SequenceModel, Transposed, _param_groups, count_parameters, evaluate, generate, s4d_block, train
from ssm_edu.mamba import Mamba
from ssm_edu.numerics import rel_error
from ssm_edu.tasks import IGNORE_INDEX, task_batches


class Ema(nn.Module):
    """The smallest block that follows the protocol: a per-channel exponential moving average.

    forward: h_t = a ⊙ h_{t-1} + (1 - a) ⊙ x_t, output W h_t. The cache is the state h (b, d).
    """

    def __init__(self, d):
        super().__init__()
        self.logit_a = nn.Parameter(torch.randn(d))
        self.out_proj = nn.Linear(d, d)

    def forward(self, x):  # (b, L, d)
        a = torch.sigmoid(self.logit_a)
        h, hs = torch.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):
            h = a * h + (1 - a) * x[:, t]
            hs.append(h)
        return self.out_proj(torch.stack(hs, 1))

    def allocate_cache(self, batch, device=None, dtype=None):
        return {"h": torch.zeros(batch, self.logit_a.shape[0], device=device, dtype=dtype)}

    def step(self, x_t, cache):
        a = torch.sigmoid(self.logit_a)
        cache["h"].mul_(a).add_((1 - a) * x_t)
        return self.out_proj(cache["h"])


BLOCKS = {
    "ema": Ema,
    "mamba": lambda d: Mamba(d, d_state=4, scan_impl="vectorized", step_impl="vectorized"),
    "s4d": lambda d: s4d_block(d, d_state=8),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_forward_is_causal(name):
    torch.manual_seed(0)
    model = SequenceModel(11, 16, 2, BLOCKS[name]).double()
    x = torch.randint(0, 11, (2, 9))
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % 11  # change the future only
    out, out2 = model(x), model(x2)
    assert out.shape == (2, 9, 11)
    assert rel_error(out2[:, :6], out[:, :6]) < 1e-12
    assert rel_error(out2[:, 6:], out[:, 6:]) > 1e-6


@pytest.mark.heavy  # up to 79 s in the GPU test phase of 2026-12-07: started first there
@pytest.mark.parametrize("name", ["ema", "mamba"])
@pytest.mark.parametrize("T", [1, 6])
def test_recurrent_generation_equals_rerunning_the_prefix(name, T):
    """The protocol's contract, end to end: step() through the model = forward() on the whole prefix."""
    torch.manual_seed(0)
    model = SequenceModel(13, 16, 2, BLOCKS[name]).double()
    prompt = torch.randint(0, 13, (3, T))
    greedy_rec = generate(model, prompt, 12, temperature=0)
    greedy_full = generate(model, prompt, 12, temperature=0, recurrent=False)
    assert greedy_rec.shape == (3, T + 12) and torch.equal(greedy_rec[:, :T], prompt)
    assert torch.equal(greedy_rec, greedy_full)
    caches = model.allocate_cache(3)
    logits = torch.stack([model.step(greedy_rec[:, t], caches) for t in range(T + 12)], 1)
    assert rel_error(logits, model(greedy_rec)) < 1e-12
    # sampling is reproducible with a seed, and depends on it
    a, b = (generate(model, prompt, 20, gen=s) for s in (1, 1))
    assert torch.equal(a, b) and not torch.equal(a, generate(model, prompt, 20, gen=2))


def test_block_without_step():
    model = SequenceModel(7, 8, 1, BLOCKS["s4d"])
    with pytest.raises(NotImplementedError, match="recurrent=False"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 2)
    assert generate(model, torch.zeros(1, 3, dtype=torch.long), 2, recurrent=False).shape == (1, 5)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, torch.zeros(3, dtype=torch.long), 2, recurrent=False)


def test_transposed():
    conv = nn.Conv1d(4, 4, 1)
    x = torch.randn(2, 5, 4)
    assert torch.allclose(Transposed(conv)(x), conv(x.mT).mT)


def test_initialisation():
    torch.manual_seed(0)
    one = SequenceModel(10, 32, 1, lambda d: Mamba(d))
    torch.manual_seed(0)
    model = SequenceModel(10, 32, 4, lambda d: Mamba(d))
    block = model.blocks[0]
    assert model.head.weight is model.embedding.weight  # tied
    assert abs(model.embedding.weight.std().item() - 0.02) < 0.003
    assert torch.allclose(block.out_proj.weight, one.blocks[0].out_proj.weight / math.sqrt(4))  # residual rescaling
    dt0 = torch.nn.functional.softplus(block.dt_proj.bias)  # _no_reinit: the inverse-softplus bias survives
    assert bool(((dt0 > 0.99e-3) & (dt0 < 1.01e-1)).all()) and dt0.max() / dt0.min() > 20
    groups = _param_groups(model, 0.1)
    no_decay = {id(p) for p in groups[1]["params"]}
    assert id(block.A_log) in no_decay and id(block.D) in no_decay and id(model.norms[0].weight) in no_decay
    assert id(block.in_proj.weight) not in no_decay
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == count_parameters(model)  # every parameter once, the tied one included


def test_evaluate_counts_only_answer_positions():
    class Fixed(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.logits = logits

        def forward(self, x):
            return self.logits[: len(x)]

    logits = torch.full((4, 3, 5), -10.0)
    logits[..., 2] = 10.0  # always predicts token 2
    y = torch.full((4, 3), IGNORE_INDEX)
    y[:, 2] = torch.tensor([2, 2, 1, 2])
    y[0, 1] = 2
    y[1, 1] = 4
    out = evaluate(Fixed(logits), torch.zeros(4, 3, dtype=torch.long), y, batch_size=3)
    assert out["accuracy"] == pytest.approx(4 / 6)  # 6 answers asked, 4 of them token 2
    assert out["sequence_accuracy"] == pytest.approx(2 / 4)  # rows 0 and 3 are right everywhere


@pytest.mark.heavy  # 113 s in the GPU test phase of 2026-12-07: started first there
def test_train_learns_an_easy_task():
    """Selective copying with no noise (L = 0) is plain copying: a small Mamba learns it within 150 steps."""
    torch.manual_seed(0)
    settings = dict(L=0, M=3, vocab=6)
    model = SequenceModel(6, 16, 1, lambda d: Mamba(d, d_state=8, scan_impl="naive"))
    x, y = task_batches("selective_copying", 256, seed=9, **settings)()
    before = evaluate(model, x, y)
    hist = train(model, task_batches("selective_copying", 32, seed=0, **settings), 150, lr=1e-2,
                 eval_every=50, eval_fn=lambda m: evaluate(m, x, y), progress=False)
    assert isinstance(hist, History) and len(hist.loss) == len(hist.step_time) == 150
    assert [s for s, _ in hist.evals] == [50, 100, 150]
    assert hist.mean_step_time > 0 and len(hist.smoothed(10)) == 150
    assert hist.evals[-1][1]["accuracy"] > 0.9 > before["accuracy"] + 0.4
    assert sum(hist.loss[-10:]) < 0.5 * sum(hist.loss[:10])
    assert not model.training
