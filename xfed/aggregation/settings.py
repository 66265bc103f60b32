"""`train_params.encryption`: the aggregation's settings as pydantic models (XFL's keys).

Validated once with the stage's train_params; `make_leaf` / `make_root` receive the model and
the aggregators read its attributes (the fixed-point ring, the DH group, the DRBG).
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import Field, ValidationError, model_validator

from xfed.aggregation.dropout import Dropout
from xfed.config.base import ConfigModel, ExactlyOne, fail
from xfed.errors import ConfigError

ENCRYPTIONS = ("otp", "plain")


class KeyExchange(ConfigModel):
    key_bitlength: Literal[2048, 3072, 4096, 6144, 8192] = Field(3072, description="RFC 7919 ffdhe group size.")
    optimized: bool = Field(True, description="Short exponents (NIST SP 800-56A security strength).")


class Csprng(ConfigModel):
    name: Literal["hmac_drbg", "ctr_drbg"] = Field("hmac_drbg", description="SP 800-90A DRBG for the pads.")
    method: Literal["sha1", "sha224", "sha256", "sha384", "sha512"] = Field(
        "sha512", description="HMAC_DRBG hash (ctr_drbg always uses AES-256).")


class Otp(ConfigModel):
    """One-time-pad secure aggregation."""

    key_bitlength: Literal[64, 128] = Field(64, description="Fixed-point modulus: 2^64 or 2^128.")
    data_type: Literal["torch.Tensor", "numpy.ndarray"] = Field("torch.Tensor", description="XFL; accepted.")
    key_exchange: KeyExchange = Field(default_factory=KeyExchange)
    csprng: Csprng = Field(default_factory=Csprng)
    dropout: Dropout | None = Field(
        None, description="Opt-in dropout-tolerant secure aggregation (docs/SECAGG.md §6): "
                          '{"threshold": t, "round_timeout_s": s, "precompute_pads": false}.')
    neighbours: int | None = Field(
        None, ge=2, description="Opt-in sparse pairing (docs/SECAGG.md §8): each label trainer shares pads "
                                "with this many neighbours (even) instead of every other one; fewer "
                                "colluders can then expose a party's update.")

    @model_validator(mode="after")
    def _neighbours(self) -> Otp:
        if self.neighbours is not None and self.neighbours % 2:
            fail("otp", [(("neighbours",), f"must be even (half on either side of the ring), got {self.neighbours}")])
        if self.neighbours is not None and self.dropout is not None:
            fail("otp", [(("neighbours",), "cannot be combined with dropout (its recovery assumes every pair "
                                           "shares pads)")])
        return self


class Plain(ConfigModel):
    """No masking: the aggregator sees each party's update (trusted aggregator, debugging)."""

    key_bitlength: Literal[64, 128] = Field(
        128, description="Fixed-point grid the sum is formed on (exact, order-independent); equal to an "
                         "otp run with the same key_bitlength bit for bit.")


class Encryption(ExactlyOne):
    """Exactly one of `otp`, `plain`."""

    _CHOICES = ENCRYPTIONS
    otp: Otp | None = None
    plain: Plain | None = None

    @property
    def method(self) -> str:
        return self.chosen


def encryption_of(value: Encryption | Mapping[str, Any] | None) -> Encryption:
    """The Encryption model for a validated model, an XFL block ({"otp": {...}} / {"plain": {}}) or None (plain).

    A block is validated here, through the model (callers that did not go through a stage config:
    horizontal_mean, benchmarks, tests); ConfigError naming the first problem.
    """
    if isinstance(value, Encryption):
        return value
    if value is None:
        return Encryption(plain=Plain())
    try:
        return Encryption.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"train_params.encryption{'.' + loc if loc else ''}: {first['msg']}") from None
