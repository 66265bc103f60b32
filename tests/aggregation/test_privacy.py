"""Client-level DP: clipping, the per-party noise share under otp and plain, the accountant, the seed."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from xfed.aggregation.privacy import (
    DpParams,
    Privatizer,
    clip,
    epsilon_spent,
    noise_multiplier,
    party_noise_std,
)


def test_clip_scales_the_whole_update_to_the_norm_and_leaves_a_small_one_alone():
    clipped, norm = clip({"a": np.array([3.0]), "b": np.array([[4.0]])}, 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [0.6])
    np.testing.assert_allclose(clipped["b"], [[0.8]])
    small, norm = clip({"a": np.array([0.3, 0.4])}, 1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_array_equal(small["a"], [0.3, 0.4])
    zero, norm = clip({"a": np.zeros(3)}, 1.0)
    assert norm == 0.0 and not zero["a"].any()


def test_release_is_anchor_plus_clipped_delta_plus_noise():
    p = Privatizer(DpParams(epsilon=8.0, clip_norm=0.5), rounds=10, encryption="otp", masked_parties=2, seed=7)
    p.set_anchor({"w": np.ones(4)})
    out, norm = p.release(1, {"w": np.ones(4) + np.array([3.0, 4.0, 0.0, 0.0])})
    assert norm == pytest.approx(5.0) and out["w"].dtype == np.float32
    noise = p.noise_rng(1).normal(0.0, p.std, size=4)
    np.testing.assert_allclose(out["w"], 1 + np.array([0.3, 0.4, 0, 0]) + noise, atol=1e-6)
    again, _ = p.release(1, {"w": np.ones(4) + np.array([3.0, 4.0, 0.0, 0.0])})
    np.testing.assert_array_equal(again["w"], out["w"])  # a re-run round re-releases the same thing
    other, _ = p.release(2, {"w": np.ones(4) + np.array([3.0, 4.0, 0.0, 0.0])})
    assert not np.array_equal(other["w"], out["w"])


@pytest.mark.parametrize("encryption, factor", [("otp", 1), ("plain", 4)])
def test_per_party_noise_sums_to_the_target_variance(encryption, factor):
    """Under otp the masked sum of m parties' noise has variance sigma^2 C^2; in plain m times that."""
    m, n = 4, 200_000
    dp = DpParams(epsilon=4.0, delta=1e-5, clip_norm=0.7)
    parties = [Privatizer(dp, rounds=20, encryption=encryption, masked_parties=m, seed=1000 + i) for i in range(m)]
    for p in parties:
        p.set_anchor({"w": np.zeros(n)})
    total = sum(p.release(3, {"w": np.zeros(n)})[0]["w"].astype(np.float64) for p in parties)
    target = factor * (parties[0].sigma * dp.clip_norm) ** 2
    assert party_noise_std(parties[0].sigma, dp.clip_norm, encryption, m) ** 2 * m == pytest.approx(target)
    # the sample variance of n normal draws has relative standard error sqrt(2/n) = 0.3%: 2% is > 6 sigma
    assert float(np.var(total)) == pytest.approx(target, rel=0.02)
    assert abs(float(np.mean(total))) < 6 * math.sqrt(target / n)


def test_fresh_privatizers_draw_from_different_os_seeds():
    dp = DpParams(epsilon=4.0)
    a, b = (Privatizer(dp, rounds=5, encryption="otp", masked_parties=2) for _ in range(2))
    assert a.seed != b.seed and a.seed.bit_length() > 64


def test_accountant_matches_the_exact_gaussian_reference():
    """R rounds of the Gaussian mechanism with full participation are one Gaussian mechanism with noise
    sigma / sqrt(R): dp_accounting's analytic epsilon (Balle & Wang 2018) is the reference. PLD matches it;
    RDP is an upper bound within 10%."""
    sigma, rounds, delta = 12.0, 100, 1e-5
    exact = dp_accounting.get_epsilon_gaussian(sigma / math.sqrt(rounds), delta)
    assert epsilon_spent(sigma, rounds, delta, "pld") == pytest.approx(exact, rel=1e-3)
    rdp = epsilon_spent(sigma, rounds, delta, "rdp")
    assert exact <= rdp <= 1.1 * exact
    assert epsilon_spent(sigma, 0, delta) == 0.0
    assert epsilon_spent(sigma, 25, delta) < epsilon_spent(sigma, 50, delta) < rdp


@pytest.mark.parametrize("eps", [1.0, 4.0, 8.0])
def test_calibrated_noise_spends_the_budget_over_the_jobs_rounds(eps):
    sigma = noise_multiplier(eps, 1e-5, 60)
    assert epsilon_spent(sigma, 60, 1e-5) == pytest.approx(eps, rel=1e-3)
    assert epsilon_spent(sigma * 1.05, 60, 1e-5) < eps
