"""Pad streams (xfed/crypto/pads.py): exactly the DRBG bytes, one stream per pair, session, label and
lane configuration, and their arguments checked."""

import numpy as np
import pytest

from xfed.crypto import MAX_REQUEST_BYTES, CtrDrbg, HmacDrbg, derivation_inputs, pad_stream, pad_words
from xfed.crypto.pads import PROTOCOL_LABEL


@pytest.mark.parametrize("csprng,method", [("hmac_drbg", "sha512"), ("hmac_drbg", "sha1"), ("ctr_drbg", "")])
def test_pad_words_are_the_drbg_bytes_read_as_little_endian_uint64(csprng, method):
    secret = bytes(range(48)) * 8
    lanes = 3
    n_words = 3 * (MAX_REQUEST_BYTES // 8) + 1001  # several NIST requests per lane, one short
    stream = pad_stream(secret, csprng=csprng, method=method or "sha512", session="job-7/2/1",
                        node_a="node-b", node_b="node-a", lanes=lanes)
    first, second = pad_words(stream, n_words), pad_words(stream, 10)
    for lane in range(lanes):
        entropy, nonce, perso = derivation_inputs(secret, session="job-7/2/1", node_a="node-a", node_b="node-b",
                                                  lane=lane, lanes=lanes)
        assert perso.startswith(PROTOCOL_LABEL)
        drbg = HmacDrbg(method, entropy, nonce, perso) if csprng == "hmac_drbg" else CtrDrbg(entropy, nonce, perso)
        start, stop = lane * n_words // lanes, (lane + 1) * n_words // lanes
        raw = b"".join(drbg.generate(min(MAX_REQUEST_BYTES, (stop - start) * 8 - off))
                       for off in range(0, (stop - start) * 8, MAX_REQUEST_BYTES))
        assert np.array_equal(first[start:stop], np.frombuffer(raw, dtype="<u8"))
        # The next request continues each lane's DRBG.
        s2, e2 = lane * 10 // lanes, (lane + 1) * 10 // lanes
        assert np.array_equal(second[s2:e2], np.frombuffer(drbg.generate((e2 - s2) * 8), dtype="<u8"))


def test_pad_stream_is_symmetric_and_distinct_per_pair_session_and_label():
    s = bytes(64)

    def words(**kw):
        args = {"csprng": "hmac_drbg", "method": "sha256", "session": "j/0/0", "node_a": "x", "node_b": "y"}
        args.update(kw)
        return pad_words(pad_stream(s, **args), 8).tolist()

    base = words()
    assert words(node_a="y", node_b="x") == base
    others = [words(node_b="z"), words(session="j/0/1"), words(session="j/1/0"), words(session="k/0/0"),
              words(method="sha512"), words(csprng="ctr_drbg"), words(lanes=2)]
    for other in others:
        assert other != base
    assert pad_words(pad_stream(bytes(range(64)), session="j/0/0", node_a="x", node_b="y"), 8).tolist() != \
        pad_words(pad_stream(s, session="j/0/0", node_a="x", node_b="y"), 8).tolist()
    # Length-prefixed ids: ("ab", "c") and ("a", "bc") must not collide.
    assert derivation_inputs(s, session="q", node_a="ab", node_b="c")[2] != \
        derivation_inputs(s, session="q", node_a="a", node_b="bc")[2]


def test_bad_stream_arguments_are_refused():
    with pytest.raises(ValueError, match="csprng"):
        pad_stream(bytes(64), csprng="xorshift", session="s", node_a="a", node_b="b")
    with pytest.raises(ValueError, match="hash"):
        pad_stream(bytes(64), method="md5", session="s", node_a="a", node_b="b")
    with pytest.raises(ValueError, match="two different nodes"):
        pad_stream(bytes(64), session="s", node_a="a", node_b="a")
    with pytest.raises(ValueError, match="session"):
        pad_stream(bytes(64), session="", node_a="a", node_b="b")
    with pytest.raises(ValueError, match="32 bytes"):
        pad_stream(bytes(16), session="s", node_a="a", node_b="b")
    for bad in (0, -1, 1 << 16, 2.0):
        with pytest.raises(ValueError, match="lanes"):
            pad_stream(bytes(64), session="s", node_a="a", node_b="b", lanes=bad)
