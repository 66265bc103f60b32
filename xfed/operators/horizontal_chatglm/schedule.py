"""The aggregation schedule: exact integer optimizer steps at which a party meets the others.

Every party must run the same number of rounds even when their data sizes differ, so the
number of rounds is fixed once (by the assist trainer, from everyone's step counts) and each
party then spreads its own optimizer steps over those rounds.  All arithmetic is on integers
and `fractions.Fraction`, so 0.1 × 10 is exactly one run and no float drift moves a round.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from xfed.errors import JobError


def count_rounds(every: Fraction | int, party_steps: dict[str, int]) -> int:
    """How many rounds every party runs, given each party's total optimizer steps.

    `every` is `aggregation.agg_steps` as the config model parsed it (`Aggregation.every`).
    A fraction f gives ceil(1/f) rounds (0.2 → 5; 0.3 → 4: at 30 %, 60 %, 90 % and the end).
    An integer interval s is applied to the longest party: ceil(max_steps / s) rounds; shorter
    parties spread their fewer steps over the same rounds.  Every party must have at least one
    optimizer step per round, otherwise it would contribute a stale adapter; that is an error
    naming the party.
    """
    if not party_steps:
        raise JobError("aggregation schedule: no party reported its number of training steps")
    if isinstance(every, Fraction):
        rounds = -(-every.denominator // every.numerator)  # ceil(1/f)
    else:
        longest = max(party_steps.values())
        rounds = max(1, -(-longest // every))
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
