"""Fixed-point rings Z/2^64 and Z/2^128: round to nearest, exact limbs, carries, overflow and NaN refused."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xfed.crypto import add_into, decode, default_frac_bits, encode, encoded_shape, sub_into


def _as_int(v: np.ndarray, bits: int) -> list[int]:
    """Python ints of the signed values (test-side reference only)."""
    flat = v.reshape(-1, bits // 64)
    out = []
    for limbs in flat.tolist():
        n = sum(int(w) << (64 * i) for i, w in enumerate(limbs))
        out.append(n - (1 << bits) if n >> (bits - 1) else n)
    return out


def test_default_scales_follow_xfl_for_64_bits():
    assert default_frac_bits(64) == 32
    assert default_frac_bits(128) == 64


@pytest.mark.parametrize("bits", [64, 128])
def test_encoding_rounds_to_nearest(bits):
    f = 4
    step = 2.0**-f
    x = np.array([0.49 * step, 0.51 * step, -0.49 * step, -0.51 * step, 1.26 * step, -3.74 * step])
    assert _as_int(encode(x, bits=bits, frac_bits=f), bits) == [0, 1, 0, -1, 1, -4]


@pytest.mark.parametrize("bits", [64, 128])
def test_layout_and_exact_integers(bits):
    x = np.array([[1.5, -2.25], [0.0, -1e-3]])
    v = encode(x, bits=bits, frac_bits=8, weight=2.0)
    assert v.dtype == np.uint64 and v.shape == encoded_shape(x.shape, bits)
    assert _as_int(v, bits) == [768, -1152, 0, -1]  # round(2 * x * 256)


def test_128_bit_limbs_are_exact_beyond_2_to_64():
    x = np.array([2.0**70 + 2.0**30, -(2.0**70) - 2.0**30, -1.0, 2.0**100])
    v = encode(x, bits=128, frac_bits=0)
    assert _as_int(v, 128) == [2**70 + 2**30, -(2**70) - 2**30, -1, 2**100]
    # The same values in the memory layout of little-endian int128.
    raw = v.tobytes()
    assert int.from_bytes(raw[16:32], "little", signed=True) == -(2**70) - 2**30


@pytest.mark.parametrize("bits", [64, 128])
def test_zero_d_and_empty_tensors(bits):
    for x in (np.array(3.25), np.zeros((0,)), np.zeros((2, 0, 3))):
        v = encode(x, bits=bits)
        assert v.shape == encoded_shape(x.shape, bits)
        back = decode(v, bits=bits)
        assert back.shape == x.shape and np.array_equal(back, x)


@given(
    bits=st.sampled_from([64, 128]),
    parts=st.lists(hnp.arrays(np.float64, 6, elements=st.floats(-1e6, 1e6)), min_size=1, max_size=8),
)
@settings(max_examples=40, deadline=None)
def test_modular_sum_of_encodings_matches_integer_sum(bits, parts):
    f = default_frac_bits(bits)
    encs = [encode(p, bits=bits, n_parties=len(parts)) for p in parts]
    acc = encs[0].copy()
    for e in encs[1:]:
        add_into(acc, e, bits)
    want = [sum(col) for col in zip(*[_as_int(e, bits) for e in encs], strict=True)]
    assert _as_int(acc, bits) == want
    for e in encs[1:]:
        sub_into(acc, e, bits)
    assert np.array_equal(acc, encs[0])
    assert np.all(np.abs(decode(encs[0], bits=bits) - parts[0]) <= 2.0 ** -(f + 1) + 2.3e-16 * np.abs(parts[0]))
    assert np.all(np.abs(decode(acc, bits=bits) - parts[0]) <= 2.0 ** -(f + 1) + 2.3e-16 * np.abs(parts[0]))


@pytest.mark.parametrize("bits", [64, 128])
def test_carries_cross_the_low_limb(bits):
    a = encode(np.array([-1.0, 2.0**-40]), bits=bits, frac_bits=bits - 24)
    b = encode(np.array([2.0**-40, -1.0]), bits=bits, frac_bits=bits - 24)
    acc = a.copy()
    add_into(acc, b, bits)
    assert _as_int(acc, bits) == [-(2 ** (bits - 24)) + 2 ** (bits - 64), -(2 ** (bits - 24)) + 2 ** (bits - 64)]


@pytest.mark.parametrize("bits", [64, 128])
def test_overflow_is_refused_with_the_tensor_name_not_wrapped(bits):
    f = default_frac_bits(bits)
    limit = 2.0 ** (bits - 1 - f)  # |value| * 2^f must stay below 2^(bits-1)
    encode(np.array([limit / 8 * 0.99]), bits=bits, n_parties=8, name="ok")
    with pytest.raises(OverflowError, match="'layer.0.lora_A'"):
        encode(np.array([0.0, limit / 8 * 1.01]), bits=bits, n_parties=8, name="layer.0.lora_A")
    with pytest.raises(OverflowError, match="'w'"):
        encode(np.array([1.0]), bits=bits, weight=limit, name="w")
    with pytest.raises(OverflowError):
        encode(np.array([-limit]), bits=bits, name="neg")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinity_are_refused_with_the_tensor_name(bad):
    with pytest.raises(ValueError, match="'blocks.3.weight'"):
        encode(np.array([1.0, bad, 2.0]), name="blocks.3.weight")


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="64 or 128"):
        encode(np.ones(2), bits=32)
    with pytest.raises(ValueError, match="frac_bits"):
        encode(np.ones(2), bits=64, frac_bits=63)
    with pytest.raises(ValueError, match="weight"):
        encode(np.ones(2), weight=-1.0)
    with pytest.raises(ValueError, match="weight"):
        encode(np.ones(2), weight=float("nan"))
    with pytest.raises(ValueError, match="n_parties"):
        encode(np.ones(2), n_parties=0)
    with pytest.raises(ValueError, match="dtype"):
        encode(np.array(["a"]))
    with pytest.raises(ValueError, match="uint64"):
        decode(np.ones(2, dtype=np.int64))
    with pytest.raises(ValueError, match="2 limbs"):
        decode(np.ones(3, dtype=np.uint64), bits=128)
    with pytest.raises(ValueError, match="divide_by"):
        decode(np.ones(3, dtype=np.uint64), divide_by=0)


def test_float32_and_integer_inputs_encode_exactly():
    x32 = np.array([0.1, -0.2], dtype=np.float32)
    assert np.array_equal(decode(encode(x32, frac_bits=40), frac_bits=40), x32.astype(np.float64))
    xi = np.array([3, -7], dtype=np.int32)
    assert np.array_equal(decode(encode(xi)), xi.astype(np.float64))


@given(
    bits=st.sampled_from([64, 128]),
    x=hnp.arrays(np.float64, st.integers(0, 12), elements=st.floats(-(2.0**40), 2.0**40)),
    f_offset=st.integers(0, 60),
)
@settings(max_examples=60, deadline=None)
def test_encoding_equals_exact_round_half_even_of_the_scaled_value(bits, x, f_offset):
    from fractions import Fraction

    f = max(0, bits - 1 - 42 - f_offset)  # keeps |x| * 2^f inside the signed range
    got = _as_int(encode(x, bits=bits, frac_bits=f), bits)
    assert got == [round(Fraction(float(v)) * 2**f) for v in x]


def test_128_bit_ties_at_half_limb_boundaries_are_exact():
    # y / 2^64 = k + 1/2 exactly: the low limb is +-2^63, the case rint(.) alone gets wrong.
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 2.0**62 + 2.0**10])
    got = _as_int(encode(x, bits=128, frac_bits=64), 128)
    assert got == [int(v * 2) * 2**63 for v in x[:-1]] + [(2**62 + 2**10) * 2**64]
    back = decode(encode(x, bits=128, frac_bits=64), bits=128, frac_bits=64)
    assert np.array_equal(back, x)
