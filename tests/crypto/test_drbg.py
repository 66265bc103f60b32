"""HMAC_DRBG and CTR_DRBG against every NIST case in ../shared/vectors, plus the limits we enforce."""

import hashlib
import hmac as stdlib_hmac
import json
import pathlib

import numpy as np
import pytest

from xfed.crypto import MAX_REQUEST_BYTES, CtrDrbg, HmacDrbg

VECTORS = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


def _cases(name):
    path = VECTORS / name
    if not path.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"missing {path}"))]
    return [pytest.param(c, id=f"{c['set']}-{i}") for i, c in enumerate(json.loads(path.read_text()))]


def _run_nist_case(drbg, case):
    h = bytes.fromhex
    if case["entropy_reseed"] is not None:
        drbg.reseed(h(case["entropy_reseed"]), h(case["additional_reseed"]))
    n = case["returned_bits_len"] // 8
    drbg.generate(n, h(case["additional"][0]))
    return drbg.generate(n, h(case["additional"][1]))


@pytest.mark.parametrize("case", _cases("hmac_drbg_sha256.json"))
def test_hmac_drbg_sha256_matches_nist_vector(case):
    h = bytes.fromhex
    drbg = HmacDrbg("sha256", h(case["entropy"]), h(case["nonce"]), h(case["personalization"]))
    assert _run_nist_case(drbg, case).hex() == case["returned_bits"]


@pytest.mark.parametrize("case", _cases("ctr_drbg_aes256.json"))
def test_ctr_drbg_aes256_matches_nist_vector(case):
    h = bytes.fromhex
    drbg = CtrDrbg(
        h(case["entropy"]),
        h(case["nonce"]),
        h(case["personalization"]),
        derivation_function=case["derivation_function"],
    )
    assert _run_nist_case(drbg, case).hex() == case["returned_bits"]


def test_vector_files_cover_every_advertised_case():
    hmac_cases = json.loads((VECTORS / "hmac_drbg_sha256.json").read_text())
    ctr_cases = json.loads((VECTORS / "ctr_drbg_aes256.json").read_text())
    assert len(hmac_cases) == 120
    assert len(ctr_cases) == 127
    assert sum(not c["derivation_function"] for c in ctr_cases) == 120


def _reference_hmac_drbg(name, seed, n_requests, size):
    """Straight transcription of SP 800-90A 10.1.2 with hmac.new, for the other hashes."""
    outlen = hashlib.new(name).digest_size
    key, v = b"\0" * outlen, b"\1" * outlen

    def update(data):
        nonlocal key, v
        key = stdlib_hmac.new(key, v + b"\0" + data, name).digest()
        v = stdlib_hmac.new(key, v, name).digest()
        if data:
            key = stdlib_hmac.new(key, v + b"\1" + data, name).digest()
            v = stdlib_hmac.new(key, v, name).digest()

    update(seed)
    out = []
    for _ in range(n_requests):
        temp = b""
        while len(temp) < size:
            v = stdlib_hmac.new(key, v, name).digest()
            temp += v
        out.append(temp[:size])
        update(b"")
    return out


@pytest.mark.parametrize("name", ["sha1", "sha224", "sha256", "sha384", "sha512"])
def test_hmac_drbg_every_hash_matches_reference_transcription(name):
    entropy = bytes(range(32))
    drbg = HmacDrbg(name, entropy, b"nonce", b"perso")
    assert [drbg.generate(77) for _ in range(3)] == _reference_hmac_drbg(name, entropy + b"nonce" + b"perso", 3, 77)


@pytest.mark.parametrize("cls", ["hmac", "ctr"])
def test_large_request_is_served_as_standard_requests_and_fill_matches(cls):
    def make():
        if cls == "hmac":
            return HmacDrbg("sha512", bytes(64), b"n", b"p")
        return CtrDrbg(bytes(32), b"n", b"p")

    n = 2 * MAX_REQUEST_BYTES + 1000
    big = make().generate(n)
    parts = make()
    pieces = parts.generate(MAX_REQUEST_BYTES) + parts.generate(MAX_REQUEST_BYTES) + parts.generate(1000)
    assert big == pieces
    filled = np.zeros(n // 8, dtype=np.uint64)
    make().fill(filled)
    assert filled.tobytes() == big[: filled.nbytes]
    # The next output continues the stream after the last (short) request.
    a, b = make(), make()
    a.generate(n)
    b.fill(bytearray(n))
    assert a.generate(64) == b.generate(64)


def test_hmac_drbg_state_hand_over_continues_the_stream():
    a = HmacDrbg("sha512", bytes(64))
    b = HmacDrbg("sha512", bytes(64))
    a.generate(100)
    c = HmacDrbg.from_state(b.export_state())
    c.generate(100)
    b.import_state(c.export_state())
    assert a.generate(50) == b.generate(50)


def test_ctr_drbg_state_hand_over_continues_the_stream():
    a = CtrDrbg(bytes(32))
    b = CtrDrbg.from_state(CtrDrbg(bytes(32)).export_state())
    assert a.generate(100) == b.generate(100)


def test_short_entropy_is_refused():
    with pytest.raises(ValueError, match="security strength"):
        HmacDrbg("sha256", bytes(31))
    with pytest.raises(ValueError, match="security strength"):
        HmacDrbg("sha1", bytes(15))
    HmacDrbg("sha1", bytes(16))
    with pytest.raises(ValueError, match="security strength"):
        CtrDrbg(bytes(31))
    with pytest.raises(ValueError, match="exactly 384 bits"):
        CtrDrbg(bytes(32), derivation_function=False)
    d = HmacDrbg("sha512", bytes(32))
    with pytest.raises(ValueError, match="security strength"):
        d.reseed(bytes(8))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unsupported HMAC_DRBG hash"):
        HmacDrbg("md5", bytes(32))
    assert HmacDrbg("SHA-512", bytes(32)).hash_name == "sha512"
    with pytest.raises(TypeError):
        HmacDrbg("sha256", "not bytes")
    with pytest.raises(ValueError):
        HmacDrbg("sha256", bytes(32)).generate(-1)
    with pytest.raises(ValueError, match="no nonce"):
        CtrDrbg(bytes(48), b"nonce", derivation_function=False)
    with pytest.raises(ValueError, match="longer than seedlen"):
        CtrDrbg(bytes(48), personalization=bytes(49), derivation_function=False)
    with pytest.raises(ValueError, match="writable"):
        HmacDrbg("sha256", bytes(32)).fill(bytes(10))


def test_reseed_interval_is_enforced():
    from xfed.crypto import RESEED_INTERVAL, ReseedRequired

    d = HmacDrbg("sha256", bytes(32))
    d._counter = RESEED_INTERVAL + 1  # reaching it for real takes 2^48 requests
    with pytest.raises(ReseedRequired):
        d.generate(1)
    d.reseed(bytes(32))
    assert len(d.generate(1)) == 1


def test_ctr_drbg_counter_wraps_across_128_bits_like_the_standard():
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes(range(32))
    v = (1 << 128) - 3  # V+1, V+2 fit; V+3 wraps to 0
    drbg = CtrDrbg.from_state((key, v, 1, True))
    got = drbg.generate(80)  # 5 blocks: counters V+1 ... V+5 (mod 2^128)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    counters = b"".join((((v + i) % (1 << 128)).to_bytes(16, "big")) for i in range(1, 6))
    assert got == enc.update(counters) + enc.finalize()
