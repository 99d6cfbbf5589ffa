"""ssm_edu.longrange (chapter 5): the scrambled-digits task, the ablation's models and
training loop, and the probes of the initial system (state kernels, their rank, delayed
recall, a short-window classifier)."""

import pytest
import torch

import ssm_edu
from ssm_edu import discretize
from ssm_edu.longrange import (ABLATION, RNNClassifier, ablation_model, ablation_table, delayed_recall,
                               final_accuracy, kernel_rank, param_count, pixel_digits, recall_probe,
                               run_ablation, state_kernels, train_classifier, window_probe)
from ssm_edu.numerics import rel_error
from ssm_edu.s4 import dplr_dense, dplr_init

DEVICE = ssm_edu.default_device()


# ---------------------------------------------------------------- the task


def test_pixel_digits_shapes_order_and_hold():
    Xtr, ytr, Xte, yte = pixel_digits(8, permute=False)
    assert Xtr.shape == (1438, 64, 1) and Xte.shape == (359, 64, 1) and Xtr.dtype == torch.float32
    assert 0 <= Xtr.min() and Xtr.max() <= 1 and set(ytr.tolist()) == set(range(10))
    Ptr, Pytr, _, _ = pixel_digits(8, permute=True)
    assert torch.equal(Pytr, ytr)  # the same split
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1))  # drawn from seed + 1
    assert torch.equal(Ptr, Xtr[:, order])  # one fixed order for every image
    assert not torch.equal(Ptr, Xtr)
    X16 = pixel_digits(16, permute=False)[0]
    assert X16.shape == (1438, 256, 1)
    held = pixel_digits(8, permute=False, hold=3)[0]
    assert held.shape == (1438, 192, 1) and torch.equal(held[:, ::3], Xtr) and torch.equal(held[:, 2::3], Xtr)


@pytest.mark.parametrize("kw,match", [(dict(side=0), "side must be an int >= 1"),
                                      (dict(hold=1.5), "hold must be an int >= 1")])
def test_pixel_digits_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        pixel_digits(**kw)


def test_delayed_recall_places_the_bits_first():
    u, b = delayed_recall(5, bits=3, width=4, L=20, noise=0.0, seed=1)
    assert u.shape == (5, 20) and b.shape == (5, 3)
    assert torch.equal(u[:, :12], (2.0 * b - 1).repeat_interleave(4, 1)) and torch.all(u[:, 12:] == 0)
    with pytest.raises(ValueError, match="bits \\* width = 24 must be <= L = 20"):
        delayed_recall(2, bits=3, width=8, L=20)


# ---------------------------------------------------------------- the ablation's models and training


@pytest.mark.parametrize("name", list(ABLATION))
def test_ablation_models_match_s4s_parameter_count_and_run(name):
    torch.manual_seed(0)
    ref = param_count(ablation_model("S4 LegS", 24, H=8, N=8))
    model = ablation_model(name, 24, H=8, N=8).to(DEVICE)
    assert abs(param_count(model) - ref) <= 0.05 * ref, (param_count(model), ref)  # LSTM: whole units
    logits = model(torch.rand(3, 24, 1, device=DEVICE))
    assert logits.shape == (3, 10)
    logits.sum().backward()
    trainable = {n.split(".")[-1] for n, p in model.named_parameters() if p.requires_grad}
    if "frozen" in name:
        assert not {"Lambda", "P"} & trainable and {"B", "Ct", "log_dt"} <= trainable
    with pytest.raises(ValueError, match="unknown name='GRU'"):
        ablation_model("GRU", 24)


def test_train_classifier_learns_an_easy_task_and_records_its_history():
    """Class = sign of the sum of the inputs: a few steps are enough for S4 LegS."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(256, 32, 1, generator=gen)
    y = (X[:, :, 0].sum(1) > 0).long()
    data = (X[:192], y[:192], X[192:], y[192:])
    torch.manual_seed(0)
    records = run_ablation(["S4 LegS", "S4 random"], data, seeds=(0,), H=8, N=8, steps=60, batch=32,
                           eval_every=20, device=DEVICE)
    assert [r["name"] for r in records] == ["S4 LegS", "S4 random"]
    r = records[0]
    assert r["step"] == [0, 20, 40, 60] and len(r["acc"]) == 4 and len(r["loss"]) == 60 and r["seconds"] > 0
    assert final_accuracy(records, "S4 LegS")[0] > 0.8
    table = ablation_table(records)
    assert "S4 LegS" in table and "seed 0" in table and str(r["params"]) in table


def test_train_classifier_does_not_touch_frozen_parameters():
    torch.manual_seed(0)
    model = ablation_model("S4 LegS, A frozen", 16, H=4, N=4)
    before = [layer.Lambda.detach().clone() for layer in model.layers]
    data = (torch.rand(64, 16, 1), torch.randint(10, (64,)), torch.rand(16, 16, 1), torch.randint(10, (16,)))
    train_classifier(model, data, steps=3, batch=8, eval_every=3)
    assert all(torch.equal(b, layer.Lambda) for b, layer in zip(before, model.layers))


# ---------------------------------------------------------------- the probes


def test_state_kernels_are_the_impulse_responses_of_the_recurrence():
    torch.manual_seed(1)
    Lambda, P, B = dplr_init(6, "random")
    K = state_kernels(Lambda, P, B, 0.05, 30)  # (L, N)
    Ab, Bb = discretize(dplr_dense(Lambda, P), B, torch.tensor(0.05, dtype=torch.float64), method="bilinear")
    x, ref = Bb, []
    for _ in range(30):
        ref.append(x)
        x = Ab @ x
    assert K.shape == (30, 6) and rel_error(K, torch.stack(ref)) < 1e-12


def test_kernel_rank_counts_independent_responses():
    # N modes with the same eigenvalue and no low-rank part respond in one direction only
    same = torch.full((5,), complex(-0.5, 2.0), dtype=torch.complex128)
    assert kernel_rank(same, torch.zeros(5, dtype=torch.complex128), torch.ones(5, dtype=torch.complex128),
                       0.01, 100) <= 2  # Re and Im of one response
    Lambda, P, B = dplr_init(16, "legs")
    torch.manual_seed(0)
    Lr, Pr, Br = dplr_init(16, "random")
    for dt in (1e-3, 1e-2):
        assert kernel_rank(Lambda, P, B, dt, 256) > kernel_rank(Lr, Pr, Br, dt, 256)
    assert kernel_rank(Lambda, P, B, 1e-1, 256) <= 16  # LegS is a real system of size N


def test_recall_probe_sees_memory_and_forgetting():
    u, b = delayed_recall(600, bits=2, width=64, L=512, noise=0.3, seed=0)
    Lambda, P, B = dplr_init(16, "legs")
    remembers = recall_probe(Lambda, P, B, 2e-3, u, b)  # Δ·distance ≈ 1
    forgets = recall_probe(Lambda, P, B, 0.5, u, b)  # e^{-0.5·400}: gone
    assert remembers > 0.9 and abs(forgets - 0.5) < 0.1


def test_window_probe_reads_what_the_last_steps_hold():
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(400, 20, 1, generator=gen)
    y = (X[:, -1, 0] > 0.5).long()  # decided by the last step
    data = (X[:300], y[:300], X[300:], y[300:])
    assert window_probe(data, 1) > 0.95
    y_first = (X[:, 0, 0] > 0.5).long()  # decided by the first step, invisible to a short window
    data = (X[:300], y_first[:300], X[300:], y_first[300:])
    assert window_probe(data, 5) < 0.7 < window_probe(data, 20)


def test_lstm_size_is_the_closest_to_equal_parameters():
    for H, N in ((8, 8), (32, 32)):
        target = param_count(ablation_model("S4 LegS", 16, H=H, N=N))
        hidden = ablation_model("LSTM", 16, H=H, N=N).rnn.hidden_size
        gaps = [abs(param_count(RNNClassifier(1, h, 10)) - target) for h in (hidden - 1, hidden, hidden + 1)]
        assert gaps[1] == min(gaps)
