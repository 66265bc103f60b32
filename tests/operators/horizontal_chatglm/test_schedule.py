"""The aggregation schedule: exact integers, the same rounds for every party, clear errors."""
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from xfed.errors import JobError
from xfed.operators.horizontal_chatglm.config import Aggregation
from xfed.operators.horizontal_chatglm.schedule import count_rounds, party_schedule


def every(agg_steps):
    """agg_steps as the config model parses it: the one parser (Aggregation)."""
    return Aggregation(agg_steps=agg_steps).every


def test_fraction_agg_steps_are_parsed_exactly():
    assert every(0.1) == Fraction(1, 10)
    assert every(0.2) == Fraction(1, 5)
    assert every(1.0) == Fraction(1)
    assert every(5) == 5
    assert every(5.0) == 5


@pytest.mark.parametrize("bad", [0, -1, 0.0, -0.5, 1.5, "x", True])
def test_bad_agg_steps_is_a_config_error(bad):
    with pytest.raises(ValidationError, match="agg_steps"):
        every(bad)


def test_tenth_gives_ten_rounds_ending_at_the_last_step():
    # XFL accumulates 0.1 in floats and crashes; here 10 rounds, the last one at the final step
    rounds = count_rounds(every(0.1), {"node-1": 37, "node-2": 100})
    assert rounds == 10
    s = party_schedule(rounds, 37)
    assert len(s.steps) == 10 and s.steps[-1] == 37
    assert s.steps == (4, 8, 12, 15, 19, 23, 26, 30, 34, 37)


def test_integer_interval_applies_to_the_longest_party():
    assert count_rounds(every(4), {"node-1": 10, "node-2": 20}) == 5
    assert party_schedule(5, 10).steps == (2, 4, 6, 8, 10)
    assert party_schedule(5, 20).steps == (4, 8, 12, 16, 20)


def test_party_with_too_few_steps_is_named():
    with pytest.raises(JobError, match="node-2 has 3"):
        count_rounds(every(0.2), {"node-1": 50, "node-2": 3})


def test_round_at_maps_steps_to_rounds():
    s = party_schedule(3, 9)
    assert [s.round_at(step) for step in range(1, 10)] == [None, None, 1, None, None, 2, None, None, 3]


@given(rounds=st.integers(1, 50), extra=st.integers(0, 500))
def test_schedule_points_are_strictly_increasing_and_end_the_run(rounds, extra):
    total = rounds + extra
    s = party_schedule(rounds, total)
    assert len(s.steps) == rounds
    assert all(a < b for a, b in zip(s.steps, s.steps[1:], strict=False))
    assert s.steps[-1] == total and s.steps[0] >= 1
    # as even as integers allow: no round is more than one step longer than another
    lengths = [b - a for a, b in zip((0, *s.steps), s.steps, strict=False)]
    assert max(lengths) - min(lengths) <= 1


@given(denominator=st.integers(1, 40), steps=st.lists(st.integers(40, 400), min_size=1, max_size=4))
def test_every_party_gets_the_same_rounds_for_a_fraction(denominator, steps):
    parties = {f"node-{i}": n for i, n in enumerate(steps)}
    rounds = count_rounds(every(1 / denominator), parties)
    assert rounds == denominator
    assert {len(party_schedule(rounds, n).steps) for n in steps} == {rounds}
