"""RunningSum: adding masked dicts one at a time equals unmask_sum of all of them, in any order."""

import itertools

import numpy as np
import pytest

from xfed.crypto import encoded_shape, unmask_sum
from xfed.crypto.running_sum import RunningSum


def _dicts(bits: int, n: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"a": rng.integers(0, 2**64, size=encoded_shape((5, 3), bits), dtype=np.uint64),
             "w": rng.integers(0, 2**64, size=encoded_shape((), bits), dtype=np.uint64)} for _ in range(n)]


@pytest.mark.parametrize("bits", [64, 128])
def test_any_arrival_order_gives_unmask_sum_bit_for_bit(bits):
    dicts = _dicts(bits)
    want = unmask_sum(dicts, bits=bits, divide_by=3.0)
    for order in itertools.permutations(range(len(dicts))):
        acc = RunningSum(bits=bits)
        for i in order:
            acc.add({k: v.copy() for k, v in dicts[i].items()}, adopt=True)
        got = acc.decode(divide_by=3.0)
        assert acc.count == len(dicts)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_without_adopt_the_caller_s_arrays_are_not_changed():
    dicts = _dicts(64, n=2)
    before = {k: v.copy() for k, v in dicts[0].items()}
    acc = RunningSum(bits=64)
    for d in dicts:
        acc.add(d)
    np.testing.assert_array_equal(dicts[0]["a"], before["a"])
    np.testing.assert_array_equal(acc.raw()["a"], dicts[0]["a"] + dicts[1]["a"])


@pytest.mark.parametrize("bad,match", [
    ({"a": np.zeros((5, 3), np.uint64)}, r"different tensors \(missing \['w'\]"),
    ({"a": np.zeros((5, 4), np.uint64), "w": np.zeros((), np.uint64)}, r"tensor 'a': expected uint64 \(5, 3\)"),
    ({"a": np.zeros((5, 3), np.int64), "w": np.zeros((), np.uint64)}, r"tensor 'a': expected uint64"),
])
def test_a_dict_that_does_not_fit_is_refused_and_nothing_is_added(bad, match):
    first = _dicts(64, n=1)[0]
    acc = RunningSum(bits=64)
    acc.add(first)
    before = {k: v.copy() for k, v in acc.raw().items()}
    with pytest.raises(ValueError, match=match):
        acc.add(bad)
    assert acc.count == 1 and all(np.array_equal(acc.raw()[k], before[k]) for k in before)


def test_first_dict_is_checked_and_an_empty_sum_does_not_decode():
    with pytest.raises(ValueError, match="expected uint64"):
        RunningSum(bits=64).add({"a": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="2 limbs"):
        RunningSum(bits=128).add({"a": np.zeros(3, np.uint64)})
    with pytest.raises(ValueError, match="nothing to decode"):
        RunningSum(bits=64).decode()


@pytest.mark.parametrize("bits", [64, 128])
def test_subtracting_an_added_dict_leaves_the_sum_of_the_others_bit_for_bit(bits):
    dicts = _dicts(bits, n=5, seed=3)
    acc = RunningSum(bits=bits)
    for d in dicts:
        acc.add({k: v.copy() for k, v in d.items()}, adopt=True)
    acc.subtract(dicts[1])
    acc.subtract(dicts[0])  # the first one: its arrays became the sum (adopt), the caller's copy is read
    assert acc.count == 3
    want = unmask_sum(dicts[2:], bits=bits)
    got = acc.decode()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    with pytest.raises(ValueError, match="tensor 'a'"):
        acc.subtract({"a": dicts[0]["a"][:1], "w": dicts[0]["w"]})
    assert acc.count == 3
    with pytest.raises(ValueError, match="nothing to subtract"):
        RunningSum(bits=bits).subtract(dicts[0])
