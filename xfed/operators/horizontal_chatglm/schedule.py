"""The aggregation schedule: exact integer optimizer steps at which a party meets the others.

Every party must run the same number of rounds even when their data sizes differ, so the
number of rounds is fixed once (by the assist trainer, from everyone's step counts) and each
party then spreads its own optimizer steps over those rounds.  All arithmetic is on integers
and `fractions.Fraction`, so 0.1 × 10 is exactly one run and no float drift moves a round.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from xfed.errors import ConfigError, JobError

# agg_steps given as a float such as 0.2 or 0.1: recover the fraction the user meant.
_MAX_DENOMINATOR = 10_000


def parse_agg_steps(agg_steps: float | int | str) -> Fraction | int:
    """`agg_steps` as a `Fraction` of the run (0 < f ≤ 1) or an `int` step interval (≥ 1)."""
    if isinstance(agg_steps, bool):
        raise ConfigError(f"aggregation.agg_steps: expected a fraction in (0, 1] or an integer ≥ 1, got {agg_steps!r}")
    if isinstance(agg_steps, int):
        if agg_steps < 1:
            raise ConfigError(f"aggregation.agg_steps: an integer step interval must be ≥ 1, got {agg_steps}")
        return agg_steps
    try:
        value = Fraction(str(agg_steps)).limit_denominator(_MAX_DENOMINATOR)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"aggregation.agg_steps: not a number: {agg_steps!r}") from None
    if value.denominator == 1 and value > 1:
        return int(value)
    if not 0 < value <= 1:
        raise ConfigError(f"aggregation.agg_steps: expected a fraction in (0, 1] or an integer ≥ 1, got {agg_steps!r}")
    return value


def count_rounds(agg_steps: float | int | str, party_steps: dict[str, int]) -> int:
    """How many rounds every party runs, given each party's total optimizer steps.

    A fraction f gives ceil(1/f) rounds (0.2 → 5; 0.3 → 4: at 30 %, 60 %, 90 % and the end).
    An integer interval s is applied to the longest party: ceil(max_steps / s) rounds; shorter
    parties spread their fewer steps over the same rounds.  Every party must have at least one
    optimizer step per round, otherwise it would contribute a stale adapter; that is an error
    naming the party.
    """
    if not party_steps:
        raise JobError("aggregation schedule: no party reported its number of training steps")
    spec = parse_agg_steps(agg_steps)
    if isinstance(spec, Fraction):
        rounds = -(-spec.denominator // spec.numerator)  # ceil(1/f)
    else:
        longest = max(party_steps.values())
        rounds = max(1, -(-longest // spec))
    short = {node: n for node, n in sorted(party_steps.items()) if n < rounds}
    if short:
        who = ", ".join(f"{node} has {n}" for node, n in short.items())
        raise JobError(
            f"aggregation schedule: {rounds} rounds need at least {rounds} optimizer steps per party, but {who}; "
            "use a larger agg_steps, more epochs or a smaller batch"
        )
    return rounds


@dataclass(frozen=True)
class Schedule:
    """A party's aggregation points: `steps[k-1]` is the optimizer step that ends round k."""

    rounds: int
    total_steps: int
    steps: tuple[int, ...]

    def round_at(self, global_step: int) -> int | None:
        """The round that ends at this optimizer step, or None between rounds."""
        try:
            return self.steps.index(global_step) + 1
        except ValueError:
            return None


def party_schedule(rounds: int, total_steps: int) -> Schedule:
    """Spread `total_steps` over `rounds` as evenly as integers allow; the last round ends the run.

    Round k ends at ceil(k·N/R); with N ≥ R the points are strictly increasing and the last is N.
    """
    if rounds < 1:
        raise JobError(f"aggregation schedule: rounds must be ≥ 1, got {rounds}")
    if total_steps < rounds:
        raise JobError(f"aggregation schedule: {total_steps} optimizer steps cannot fill {rounds} rounds")
    steps = tuple(-(-k * total_steps // rounds) for k in range(1, rounds + 1))
    return Schedule(rounds=rounds, total_steps=total_steps, steps=steps)
