"""Client-level differential privacy: clip each party's round delta, add Gaussian noise, account (ε, δ).

Each round a party releases x + clip(θ − x, C) + noise, where x is the global adapter it started the
round from and θ its trained one: the clipped delta has L2 norm ≤ C over all trainable tensors, so
adding or removing one party changes the *sum* of the parties' releases by at most C (user-level DP,
add/remove adjacency, every party in every round: no subsampling). The sum must carry Gaussian noise
of standard deviation σ·C, where σ (the noise multiplier) is calibrated so that R rounds of that
Gaussian mechanism spend (ε, δ) — by `dp_accounting` (Google's maintained accountant; RDP by default,
PLD on request), never by a formula of ours.

Who adds the noise depends on what the aggregator sees:
- `otp`: only the masked sum of the m label trainers. Each adds noise of variance σ²C²/m, so their
  sum carries σ²C² (distributed DP; the aggregator never sees a party's own noise). An assist trainer
  that also trains adds the same share (its own release is in the clear to itself; its share only
  adds noise for everyone else). If parties drop out of a round, the survivors' sum carries
  (survivors/m)·σ²C²: the accountant's ε assumes all m — a dropout-tolerant protocol must re-account.
- `plain`: the aggregator sees each party's release, so each adds the full σ²C² (local noise: the
  mean carries m times the variance it does under otp — the accuracy cost of not masking).

Noise is drawn from numpy's PCG64 seeded with 128 bits from the OS CSPRNG (`secrets`), drawn once per
party and job and never sent anywhere; round r's noise comes from (seed, r). The seed is kept with the
party's resume state, so a resumed attempt re-releases a re-run round *identically* (same delta, same
noise: no extra privacy cost, and the resumed job equals the uninterrupted one). (Floating-point
Gaussian sampling leaks through its low bits in theory, Mironov 2012; not addressed here.)
The weighted mean must use equal weights (`weighting: uniform`): an example-count weight would scale a
party's influence, and so its sensitivity, by its share of the examples.
"""

from __future__ import annotations

import math
import secrets
from functools import lru_cache
from typing import Literal, Mapping

import numpy as np
from pydantic import Field

from xfed.config.base import ConfigModel
from xfed.errors import ConfigError

ACCOUNTANTS = ("rdp", "pld")


class DpParams(ConfigModel):
    """`aggregation.dp`: client-level differential privacy over the job's rounds."""

    epsilon: float = Field(..., gt=0, allow_inf_nan=False, description="ε: the privacy budget of the whole job.")
    delta: float = Field(1e-5, gt=0, lt=1, allow_inf_nan=False,
                         description="δ: the failure probability (well below 1 / number of parties).")
    clip_norm: float = Field(1.0, gt=0, allow_inf_nan=False,
                             description="C: L2 norm each party's round delta (all trainable tensors) is clipped to.")
    accountant: Literal["rdp", "pld"] = Field(
        "rdp", description="dp_accounting's RDP accountant (fast, slightly conservative) or PLD (tight; "
                           "calibration takes ~15 s).")


def _accountant(kind: str):
    from dp_accounting import pld, rdp

    if kind not in ACCOUNTANTS:
        raise ConfigError(f"aggregation.dp.accountant: {kind!r} is not one of {', '.join(ACCOUNTANTS)}")
    return rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant()


def _event(sigma: float, rounds: int):
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), int(rounds))


@lru_cache(maxsize=32)
def noise_multiplier(epsilon: float, delta: float, rounds: int, accountant: str = "rdp") -> float:
    """σ such that `rounds` Gaussian mechanisms of noise σ·C on a sum of sensitivity C spend (ε, δ)."""
    import dp_accounting

    if rounds < 1:
        raise ConfigError(f"aggregation.dp: {rounds} rounds: nothing to calibrate")
    _accountant(accountant)  # checks the name before the search
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: _accountant(accountant), lambda s: _event(s, rounds), float(epsilon), float(delta)))


def epsilon_spent(sigma: float, rounds_done: int, delta: float, accountant: str = "rdp") -> float:
    """ε spent after `rounds_done` rounds with noise multiplier σ, at δ (0 before the first round)."""
    if rounds_done <= 0:
        return 0.0
    return float(_accountant(accountant).compose(_event(sigma, rounds_done)).get_epsilon(float(delta)))


def party_noise_std(sigma: float, clip_norm: float, encryption: str, masked_parties: int) -> float:
    """Each party's noise standard deviation: σC/√m under otp (the masked sum carries σC), σC in plain."""
    if encryption == "otp":
        return sigma * clip_norm / math.sqrt(max(1, int(masked_parties)))
    return sigma * clip_norm


def clip(delta: Mapping[str, np.ndarray], clip_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """(delta scaled to L2 norm ≤ clip_norm over all tensors together, its norm before clipping)."""
    norm = math.sqrt(sum(float(np.vdot(v, v)) for v in delta.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in delta.items()}, norm


class Privatizer:
    """One party's side of client-level DP: `release(tensors)` = anchor + clip(tensors − anchor) + noise.

    `anchor` is the global adapter the party started the round from (set after every aggregate).
    """

    def __init__(self, params: DpParams, rounds: int, encryption: str, masked_parties: int,
                 seed: int | None = None) -> None:
        self.params, self.rounds = params, int(rounds)
        self.sigma = noise_multiplier(params.epsilon, params.delta, self.rounds, params.accountant)
        self.std = party_noise_std(self.sigma, params.clip_norm, encryption, masked_parties)
        # 128 bits from the OS CSPRNG, or the seed a resumed attempt read back from its resume state
        self.seed = secrets.randbits(128) if seed is None else int(seed)
        self.anchor: dict[str, np.ndarray] | None = None

    def noise_rng(self, round_idx: int) -> np.random.Generator:
        """Round `round_idx`'s noise generator: the same numbers whenever that round is (re-)run."""
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(int(round_idx),))))

    def set_anchor(self, tensors: Mapping[str, np.ndarray]) -> None:
        self.anchor = {k: np.asarray(v, dtype=np.float64).copy() for k, v in tensors.items()}

    def release(self, round_idx: int, tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """(what the party uploads in round `round_idx`, float32; the delta's norm before clipping)."""
        if self.anchor is None or set(self.anchor) != set(tensors):
            raise ConfigError("aggregation.dp: no global adapter to measure this round's delta from")
        delta = {k: np.asarray(v, dtype=np.float64) - self.anchor[k] for k, v in tensors.items()}
        clipped, norm = clip(delta, self.params.clip_norm)
        rng = self.noise_rng(round_idx)
        out = {k: (self.anchor[k] + clipped[k] + rng.normal(0.0, self.std, size=clipped[k].shape)
                   ).astype(np.float32) for k in sorted(clipped)}
        return out, norm

    def spent(self, rounds_done: int) -> dict[str, float]:
        """The metrics record's DP fields after `rounds_done` rounds."""
        return {"dp_epsilon": round(epsilon_spent(self.sigma, rounds_done, self.params.delta,
                                                  self.params.accountant), 4),
                "dp_delta": self.params.delta, "dp_noise_multiplier": round(self.sigma, 4)}
