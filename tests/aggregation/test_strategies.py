"""Server strategies: each against a step computed by hand, resume continuity, config parsing, and
a FedAdam root over real Redis under otp that equals FedAdam applied to the plain mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from xfed.aggregation import make_leaf, make_root
from xfed.aggregation.strategy import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    StrategyChoice,
    make_strategy,
)
from xfed.errors import ConfigError, JobError

from .conftest import run_parties

X0 = {"w": np.array([1.0, 2.0], np.float32)}


def _steps(strategy, means):
    strategy.start(X0)
    return [strategy.step(r, {"w": np.asarray(m, np.float64)})["w"] for r, m in enumerate(means, 1)]


def test_fedavg_returns_the_weighted_mean_as_float32():
    s = FedAvg()
    s.start(X0)
    out = s.finalize(1, {"w": np.array([30.0, 60.0])}, 30.0)
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], [1.0, 2.0])


def test_fedavgm_hand_computed_two_rounds_and_nesterov():
    # x0 = [1, 2]; beta 0.5, eta 2
    # round 1: mean [2, 0] -> delta [1, -2], v = [1, -2], x1 = x0 + 2 v = [3, -2]
    # round 2: mean [3, -1] -> delta [0, 1], v = 0.5 [1, -2] + [0, 1] = [0.5, 0], x2 = [3, -2] + 2 [0.5, 0] = [4, -2]
    x1, x2 = _steps(FedAvgM(FedAvgM.Params(server_lr=2.0, momentum=0.5)), [[2, 0], [3, -1]])
    np.testing.assert_allclose(x1, [3, -2])
    np.testing.assert_allclose(x2, [4, -2])
    # nesterov, round 1: x1 = x0 + 2 (0.5 v + delta) = [1, 2] + 2 [1.5, -3] = [4, -4]
    [n1] = _steps(FedAvgM(FedAvgM.Params(server_lr=2.0, momentum=0.5, nesterov=True)), [[2, 0]])
    np.testing.assert_allclose(n1, [4, -4])
    # momentum 0, eta 1 is FedAvg
    [plain] = _steps(FedAvgM(FedAvgM.Params(momentum=0.0)), [[2, 0]])
    np.testing.assert_array_equal(plain, [2, 0])


def _opt(cls, **kw):
    return cls(cls.Params(server_lr=1.0, beta_1=0.5, tau=0.5, **kw))


def test_fedadam_hand_computed_two_rounds():
    # x0 = [1, 2], beta1 .5, beta2 .75, tau .5, eta 1, v_-1 = tau^2 = .25
    # round 1: mean [3, 2] -> delta [2, 0]; m = [1, 0]; v = .75*.25 + .25*[4, 0] = [1.1875, .1875]
    #          x1 = x0 + m / (sqrt(v) + .5)
    x1, x2 = _steps(_opt(FedAdam, beta_2=0.75), [[3, 2], [4, 2]])
    want1 = np.array([1 + 1 / (math.sqrt(1.1875) + 0.5), 2.0])
    np.testing.assert_allclose(x1, want1, rtol=1e-6)
    # round 2: mean [4, 2] -> delta [4 - x1[0], 0]; m = .5 m1 + .5 delta; v = .75 v1 + .25 delta^2
    d = 4 - np.float64(x1[0])
    m, v = 0.5 * 1 + 0.5 * d, 0.75 * 1.1875 + 0.25 * d * d
    np.testing.assert_allclose(x2, [x1[0] + m / (math.sqrt(v) + 0.5), 2.0], rtol=1e-6)


def test_fedyogi_hand_computed_step():
    # v = .25 - (1 - .75) * 4 * sign(.25 - 4) = 1.25 on the first element; .25 - 0 on the second
    [x1] = _steps(_opt(FedYogi, beta_2=0.75), [[3, 2]])
    np.testing.assert_allclose(x1, [1 + 1 / (math.sqrt(1.25) + 0.5), 2.0], rtol=1e-6)
    # the second moment moves by at most (1 - beta2) delta^2: a large v shrinks slowly
    s = _opt(FedYogi, beta_2=0.75)
    s.start(X0)
    s.v = {"w": np.array([100.0, 100.0])}
    s.step(1, {"w": np.array([3.0, 2.0])})
    np.testing.assert_allclose(s.v["w"], [100 - 0.25 * 4, 100.0])


def test_fedadagrad_hand_computed_step_and_default_without_momentum():
    # v = .25 + 4 = 4.25; beta1 .5: m = 1
    [x1] = _steps(_opt(FedAdagrad), [[3, 2]])
    np.testing.assert_allclose(x1, [1 + 1 / (math.sqrt(4.25) + 0.5), 2.0], rtol=1e-6)
    s = FedAdagrad(FedAdagrad.Params(server_lr=1.0, tau=0.5))  # default beta1 0: m = delta = 2
    [y1] = _steps(s, [[3, 2]])
    np.testing.assert_allclose(y1, [1 + 2 / (math.sqrt(4.25) + 0.5), 2.0], rtol=1e-6)


def test_fedadam_with_bias_correction_over_one_sgd_step_is_torch_adam_on_the_gradients():
    # each round the parties take one SGD step (lr 1) from the global x: their mean is x - g, the mean gradient
    import torch

    rng = np.random.default_rng(1)
    grads = [rng.normal(size=3) * 10 ** rng.uniform(-3, 0, size=3) for _ in range(6)]
    x0 = np.array([0.5, -1.0, 2.0])
    s = FedAdam(FedAdam.Params(server_lr=0.1, beta_1=0.9, beta_2=0.999, tau=1e-8, bias_correction=True))
    s.start({"w": x0.astype(np.float32)})
    w = torch.nn.Parameter(torch.tensor(x0, dtype=torch.float64))
    adam = torch.optim.Adam([w], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    for r, g in enumerate(grads, 1):
        x = s.current["w"].astype(np.float64)
        got = s.step(r, {"w": x - g})["w"]
        w.data = torch.tensor(x)  # the server's float32 global, as the parties receive it
        w.grad = torch.tensor(g)
        adam.step()
        np.testing.assert_allclose(got, w.detach().numpy().astype(np.float32), rtol=1e-6, atol=1e-7)
    # FedAdagrad's v is a sum: only m is corrected
    a = FedAdagrad(FedAdagrad.Params(server_lr=1.0, beta_1=0.5, tau=0.5, bias_correction=True))
    [y1] = _steps(a, [[3, 2]])  # m = .5 * 2 = 1 -> 1 / (1 - .5) = 2; v = 0 + 4
    np.testing.assert_allclose(y1, [1 + 2 / (2 + 0.5), 2.0], rtol=1e-6)


def test_fedadam_clip_norm_is_torch_adam_after_clip_grad_norm_over_every_tensor():
    # parties: one SGD step of lr 1, no clipping of their own; the server clips the mean change over both
    # tensors together, as the centralized Trainer's max_grad_norm clips its gradient before Adam
    import torch

    rng = np.random.default_rng(2)
    x0 = {"a": np.array([0.5, -1.0, 2.0]), "b": np.array([[0.1, 0.2], [-0.3, 0.4]])}
    s = FedAdam(FedAdam.Params(server_lr=0.1, beta_1=0.9, beta_2=0.999, tau=1e-8, bias_correction=True,
                               clip_norm=1.0))
    s.start({k: v.astype(np.float32) for k, v in x0.items()})
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in x0.items()}
    adam = torch.optim.Adam(params.values(), lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    clipped = 0
    for r in range(1, 7):
        grads = {k: rng.normal(size=v.shape) * (3.0 if r % 2 else 0.1) for k, v in x0.items()}  # above and below 1
        x = {k: v.astype(np.float64) for k, v in s.current.items()}
        got = s.step(r, {k: x[k] - grads[k] for k in x})
        for k, p in params.items():
            p.data, p.grad = torch.tensor(x[k]), torch.tensor(grads[k])
        norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0))
        clipped += norm > 1.0
        adam.step()
        for k, p in params.items():
            np.testing.assert_allclose(got[k], p.detach().numpy().astype(np.float32), rtol=1e-6, atol=1e-7)
    assert 0 < clipped < 6  # both branches taken
    # hand-computed: delta [3, 4] (norm 5) clipped to norm 1 -> [0.6, 0.8]; beta1 0, eta 1: x1 = x0 + m/(sqrt(v) + tau)
    h = FedAdam(FedAdam.Params(server_lr=1.0, beta_1=0.0, beta_2=0.0, tau=1.0, clip_norm=1.0))
    [x1] = _steps(h, [[4, 6]])
    want = np.array([0.6, 0.8]) * (1 - 1e-6 / 5) / (np.array([0.6, 0.8]) + 1.0)  # coef 1 / (5 + 1e-6)
    np.testing.assert_allclose(x1, X0["w"] + want, rtol=1e-6)
    with pytest.raises(ValidationError):
        StrategyChoice.model_validate({"fedadam": {"clip_norm": 0}})


def test_cosine_server_lr_decays_over_the_job_rounds_hand_computed():
    # FedAvgM without momentum: x_{t+1} = x_t + eta_t * delta_t; eta_t = eta * (1 + cos(pi (t - 1) / T)) / 2
    s = FedAvgM(FedAvgM.Params(server_lr=2.0, momentum=0.0, server_lr_schedule="cosine"), rounds=4)
    assert [s.server_lr(t) for t in (1, 2, 3, 4)] == pytest.approx([2.0, 1 + math.sqrt(0.5), 1.0, 1 - math.sqrt(0.5)])
    x1, x2 = _steps(s, [[2, 2], [2, 2]])  # round 1: delta [1, 0] at eta 2; round 2: delta [2 - 3, 0]
    np.testing.assert_allclose(x1, [3.0, 2.0])
    np.testing.assert_allclose(x2, [3 - (1 + math.sqrt(0.5)), 2.0], rtol=1e-6)
    # FedAdam: the same first step as at a constant eta, scaled by eta_t
    cos = FedAdam(FedAdam.Params(server_lr=1.0, beta_1=0.5, beta_2=0.75, tau=0.5, server_lr_schedule="cosine"),
                  rounds=3)
    (c1, c2), (k1, k2) = _steps(_opt(FedAdam, beta_2=0.75), [[3, 2], [3, 2]]), _steps(cos, [[3, 2], [3, 2]])
    np.testing.assert_allclose(k1, c1, rtol=1e-7)  # round 1: eta_1 = eta
    np.testing.assert_allclose(k2 - k1, 0.75 * (c2 - c1), rtol=1e-6)  # round 2: same m, v; eta_2 = 0.75 eta
    with pytest.raises(JobError, match="needs the job's number of rounds"):
        make_strategy("fedadam", {"server_lr_schedule": "cosine"})
    with pytest.raises(ValidationError):
        StrategyChoice.model_validate({"fedadam": {"server_lr_schedule": "step"}})
    assert make_strategy("fedyogi", {"server_lr_schedule": "cosine"}, rounds=9).server_lr(10) == pytest.approx(0.0)


def test_server_warmup_is_transformers_linear_warmup_then_the_schedule():
    # hand-computed, W 2 of T 6, cosine: rounds 1..6 are steps 0..5 -> 0, eta/2, then cos over the last 4
    s = FedAdam(FedAdam.Params(server_lr=2.0, server_lr_schedule="cosine", server_warmup_rounds=2), rounds=6)
    want = [0.0, 1.0, 2.0, 1 + math.sqrt(0.5), 1.0, 1 - math.sqrt(0.5)]
    assert [s.server_lr(t) for t in range(1, 7)] == pytest.approx(want)
    # against the schedules a Trainer with warmup_steps W uses (round t = optimizer step t - 1)
    import torch
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    for schedule, make in (("cosine", lambda: get_cosine_schedule_with_warmup(opt, 7, 50)),
                           ("constant", lambda: get_constant_schedule_with_warmup(opt, 7))):
        ref = make().lr_lambdas[0]
        s = FedAvgM(FedAvgM.Params(server_lr=0.2, server_lr_schedule=schedule, server_warmup_rounds=7), rounds=50)
        assert [s.server_lr(t) for t in range(1, 51)] == pytest.approx([0.2 * ref(k) for k in range(50)], abs=1e-12)
    # round 1 (eta 0) moves nothing but builds the moments: round 2 steps with them
    w = FedAdam(FedAdam.Params(server_lr=1.0, beta_1=0.5, beta_2=0.75, tau=0.5, server_warmup_rounds=2), rounds=4)
    x1, x2 = _steps(w, [[3, 2], [3, 2]])
    np.testing.assert_allclose(x1, X0["w"])
    # delta 2 both rounds (x stayed at 1); v starts at tau^2 = .25 (no bias correction)
    m, v = 0.5 * (0.5 * 2) + 0.5 * 2, 0.75 * (0.75 * 0.25 + 0.25 * 4) + 0.25 * 4
    np.testing.assert_allclose(x2, [1 + 0.5 * m / (math.sqrt(v) + 0.5), 2.0], rtol=1e-6)
    with pytest.raises(JobError, match="leaves none of the job's 4 rounds"):
        make_strategy("fedadam", {"server_warmup_rounds": 4}, rounds=4)
    with pytest.raises(ValidationError):
        StrategyChoice.model_validate({"fedavgm": {"server_warmup_rounds": -1}})


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_strategy_restored_from_its_state_continues_exactly(name):
    rng = np.random.default_rng(0)
    means = [{"w": rng.normal(size=(3, 4)), "b": rng.normal(size=5)} for _ in range(4)]
    x0 = {"w": np.zeros((3, 4), np.float32), "b": np.ones(5, np.float32)}
    ref = make_strategy(name)
    ref.start(x0)
    outs = [ref.step(r, m) for r, m in enumerate(means, 1)]
    first = make_strategy(name)
    first.start(x0)
    for r in (1, 2):
        first.step(r, means[r - 1])
    state = {k: np.array(v) for k, v in first.state().items()}  # what resume.py writes and reads back
    resumed = make_strategy(name)
    resumed.start(outs[1])  # the restored aggregate of round 2
    resumed.load_state(state)
    for r in (3, 4):
        got = resumed.step(r, means[r - 1])
        for k in got:
            np.testing.assert_array_equal(got[k], outs[r - 1][k])


def test_state_of_another_strategy_is_refused():
    with pytest.raises(JobError, match="unexpected entries"):
        FedAdam().load_state({"velocity/w": np.zeros(2)})
    with pytest.raises(JobError, match="does not belong"):
        FedAvg().load_state({"m/w": np.zeros(2)})


def test_config_names_or_parameters_and_clear_errors():
    assert StrategyChoice.model_validate("fedyogi").build().name == "fedyogi"
    built = StrategyChoice.model_validate({"fedavgm": {"server_lr": 3.0, "momentum": 0.0}}).build()
    assert isinstance(built, FedAvgM) and built.params.server_lr == 3.0
    for bad, match in [("fedsgd", "unknown strategy 'fedsgd'"), ({}, "exactly one of fedavg"),
                       ({"fedadam": {"lr": 1.0}}, "fedadam.lr"), ({"fedadam": {"beta_1": 1.0}}, "less than 1"),
                       ({"fedadam": {"server_lr": 0}}, "greater than 0"), ({"fedadam": {"tau": "1"}}, "tau")]:
        with pytest.raises(ValidationError, match=match):
            StrategyChoice.model_validate(bad)
    with pytest.raises(ConfigError, match="unknown strategy"):
        make_strategy("nope")


def test_fedadam_under_otp_equals_fedadam_on_the_plain_mean(federation):
    """The strategy sees only the decoded mean: a FedAdam root over real Redis with otp gives what FedAdam
    gives on the mean computed by hand."""
    trainers = ["node-1", "node-2"]
    otp = {"otp": {"key_bitlength": 128, "key_exchange": {"key_bitlength": 2048, "optimized": True},
                   "csprng": {"name": "hmac_drbg", "method": "sha512"}}}
    ctxs = federation(trainers)
    initial = {"w": np.linspace(-1, 1, 6, dtype=np.float32)}
    params = FedAdam.Params(server_lr=0.1)
    uploads = {n: [{"w": initial["w"] + (i + 1) * (r + 1) * 0.25} for r in range(2)] for i, n in enumerate(trainers)}

    def leaf(node):
        def fn():
            agg = make_leaf(ctxs[node], otp)
            agg.setup()
            agg.receive_initial()
            return [agg.aggregate(r, uploads[node][r], 1.0) for r in range(2)]
        return fn

    def root():
        agg = make_root(ctxs["assist"], otp, strategy=FedAdam(params))
        agg.setup()
        agg.broadcast_initial(initial)
        return [agg.aggregate(r, None) for r in range(2)]

    got = run_parties({**{n: leaf(n) for n in trainers}, "assist": root})
    ref = FedAdam(params)
    ref.start(initial)
    for r in range(2):
        want = ref.step(r, {"w": sum(uploads[n][r]["w"].astype(np.float64) for n in trainers) / 2})
        np.testing.assert_allclose(got["assist"][r]["w"], want["w"], atol=1e-7)
        for n in trainers:
            np.testing.assert_array_equal(got[n][r]["w"], got["assist"][r]["w"])
