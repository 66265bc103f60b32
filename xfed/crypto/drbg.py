"""Deterministic random bit generators of NIST SP 800-90A Rev.1: HMAC_DRBG (§10.1.2) and CTR_DRBG (§10.2).

Both are used as keyed pad streams for the one-time-pad masks, so besides the standard
`generate(n_bytes, additional)` each has `fill(buffer)`: it writes into a caller-owned buffer
(a numpy array, bytearray or memoryview) exactly the bytes that back-to-back
`generate(MAX_REQUEST_BYTES)` calls (and one shorter last call) would return, without Python
work per output byte.

Large requests: the standard caps one request at 2^19 bits (2^16 bytes). `generate(n)` with a
larger `n` is served as several standard requests of 2^16 bytes and a shorter last one; the
additional input, if any, goes to the first of them only. `fill` is the same with no additional
input. Each standard request counts once towards the reseed interval (2^48 requests).

Prediction resistance is not offered (the entropy input of our pad streams is a Diffie-Hellman
secret, not a live entropy source).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["HmacDrbg", "CtrDrbg", "MAX_REQUEST_BYTES", "RESEED_INTERVAL", "ReseedRequired"]

MAX_REQUEST_BYTES = 1 << 16  # 2^19 bits per request (SP 800-90A Table 2 and Table 3)
RESEED_INTERVAL = 1 << 48
_MAX_INPUT_BYTES = 1 << 32  # 2^35 bits: entropy, personalization and additional input lengths

# Highest security strength each hash supports (SP 800-90A Table 2 / SP 800-57 Part 1).
_HASHES = {"sha1": 128, "sha224": 192, "sha256": 256, "sha384": 256, "sha512": 256}
_TRANS_36 = bytes(x ^ 0x36 for x in range(256))
_TRANS_5C = bytes(x ^ 0x5C for x in range(256))


class ReseedRequired(RuntimeError):
    """The DRBG served RESEED_INTERVAL requests since its last (re)seed; call `reseed` first."""


def _as_bytes(value: bytes | bytearray | memoryview, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) > _MAX_INPUT_BYTES:
        raise ValueError(f"{what} is longer than 2^35 bits")
    return value


def _writable_bytes(buffer) -> memoryview:
    view = memoryview(buffer)
    if view.readonly:
        raise ValueError("fill() needs a writable buffer")
    if not view.c_contiguous:
        raise ValueError("fill() needs a C-contiguous buffer")
    return view.cast("B")


def normalize_hash_name(name: str) -> str:
    """'SHA-512', 'sha512' -> 'sha512'; ValueError for hashes SP 800-90A does not list for HMAC_DRBG."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in _HASHES:
        raise ValueError(f"unsupported HMAC_DRBG hash {name!r}; expected one of {sorted(_HASHES)}")
    return key


class _Drbg:
    """What SP 800-90A §9 makes the same for every mechanism: Reseed (fresh entropy + additional input
    -> the mechanism's seed material -> Update), the request loop of `generate`, the state hand-over.

    A mechanism gives `_check_entropy`, `_reseed_material`, `_update`, `_request(out, n, additional)`,
    `from_state` and `_mode` (what a handed-over state must agree on), and `_spare`: the bytes past n
    that `_request` may write (CTR_DRBG writes whole AES blocks)."""

    _spare = 0

    def import_state(self, state) -> None:
        """Take over the state another copy of this stream reached (see `export_state`)."""
        other = type(self).from_state(state)
        if other._mode() != self._mode():
            raise ValueError(f"DRBG state is for {other._mode()}, this stream is {self._mode()}")
        self._key, self._v, self._counter = other._key, other._v, other._counter

    def _instantiate(self, seed_material: bytes, key, v) -> None:
        """Instantiate: Key and V start at the mechanism's constants, then Update with the seed material."""
        self._key, self._v = key, v
        self._update(seed_material)
        self._counter = 1

    def reseed(self, entropy: bytes, additional: bytes = b"") -> None:
        """Reseed: mix in fresh entropy (and optional additional input)."""
        entropy = _as_bytes(entropy, "entropy")
        additional = _as_bytes(additional, "additional input")
        self._check_entropy(entropy)
        self._update(self._reseed_material(entropy, additional))
        self._counter = 1

    def generate(self, n_bytes: int, additional: bytes = b"") -> bytes:
        """Generate `n_bytes` bytes; more than 2^16 are served as several requests."""
        n_bytes = _check_count(n_bytes)
        additional = _as_bytes(additional, "additional input")
        view = memoryview(bytearray(n_bytes + self._spare))
        pos = 0
        while True:
            take = min(n_bytes - pos, MAX_REQUEST_BYTES)
            self._request(view[pos:], take, additional)
            additional = b""
            pos += take
            if pos >= n_bytes:
                return bytes(view[:n_bytes])


class HmacDrbg(_Drbg):
    """HMAC_DRBG (SP 800-90A Rev.1 §10.1.2) over sha1/sha224/sha256/sha384/sha512.

    `entropy` shorter than the hash's security strength (128 bits for sha1, 192 for sha224,
    256 otherwise) is refused with ValueError.
    """

    def __init__(
        self,
        hash_name: str,
        entropy: bytes,
        nonce: bytes = b"",
        personalization: bytes = b"",
    ) -> None:
        self._set_hash(hash_name)
        entropy = _as_bytes(entropy, "entropy")
        self._check_entropy(entropy)
        seed = entropy + _as_bytes(nonce, "nonce") + _as_bytes(personalization, "personalization")
        self._instantiate(seed, b"\x00" * self._outlen, b"\x01" * self._outlen)

    # -- state hand-over (used to run a stream's next requests in a worker process) --
    def export_state(self) -> tuple[str, bytes, bytes, int]:
        """(hash_name, Key, V, reseed_counter): everything needed to continue this stream elsewhere."""
        return (self.hash_name, self._key, self._v, self._counter)

    @classmethod
    def from_state(cls, state: tuple[str, bytes, bytes, int]) -> HmacDrbg:
        """Continue a stream from `export_state()` output (no new instantiation)."""
        hash_name, key, v, counter = state
        self = cls.__new__(cls)
        self._set_hash(hash_name)
        if len(key) != self._outlen or len(v) != self._outlen:
            raise ValueError("HMAC_DRBG state has the wrong length for its hash")
        self._key, self._v, self._counter = bytes(key), bytes(v), int(counter)
        return self

    def fill(self, buffer) -> None:
        """Write len(buffer) bytes of output into `buffer` as consecutive 2^16-byte requests."""
        view = _writable_bytes(buffer)
        n = view.nbytes
        for pos in range(0, n, MAX_REQUEST_BYTES):
            self._request(view[pos:], min(n - pos, MAX_REQUEST_BYTES), b"")

    # -- internals --
    def _set_hash(self, hash_name: str) -> None:
        self.hash_name = normalize_hash_name(hash_name)
        self.security_strength = _HASHES[self.hash_name]
        self._outlen = hashlib.new(self.hash_name).digest_size
        self._block_size = hashlib.new(self.hash_name).block_size

    def _mode(self) -> str:
        return f"HMAC_DRBG/{self.hash_name}"

    @staticmethod
    def _reseed_material(entropy: bytes, additional: bytes) -> bytes:
        return entropy + additional

    def _check_entropy(self, entropy: bytes) -> None:
        if len(entropy) * 8 < self.security_strength:
            raise ValueError(
                f"entropy input of {len(entropy) * 8} bits is shorter than the "
                f"{self.security_strength}-bit security strength of HMAC_DRBG/{self.hash_name}"
            )

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.digest(key, data, self.hash_name)

    def _update(self, provided: bytes) -> None:
        key = self._hmac(self._key, self._v + b"\x00" + provided)
        v = self._hmac(key, self._v)
        if provided:
            key = self._hmac(key, v + b"\x01" + provided)
            v = self._hmac(key, v)
        self._key, self._v = key, v

    def _request(self, out: memoryview, n: int, additional: bytes) -> None:
        """One standard Generate request (HMAC_DRBG_Generate) writing n <= 2^16 bytes into out[:n]."""
        if self._counter > RESEED_INTERVAL:
            raise ReseedRequired("HMAC_DRBG reached its reseed interval; reseed before generating")
        if additional:
            self._update(additional)
        if n:
            outlen = self._outlen
            n_blocks = -(-n // outlen)
            key = self._key.ljust(self._block_size, b"\x00")
            inner = hashlib.new(self.hash_name, key.translate(_TRANS_36)).copy
            outer = hashlib.new(self.hash_name, key.translate(_TRANS_5C)).copy
            blocks = [b""] * n_blocks
            v = self._v
            # V = HMAC(Key, V) from copies of the keyed inner/outer states: two compression
            # calls per block, which is as little Python as HMAC allows (see bench floor).
            for i in range(n_blocks):
                h = inner()
                h.update(v)
                o = outer()
                o.update(h.digest())
                v = o.digest()
                blocks[i] = v
            self._v = v
            joined = b"".join(blocks)
            out[:n] = joined[:n] if len(joined) != n else joined
        self._update(additional)
        self._counter += 1


def _check_count(n_bytes: int) -> int:
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, int):
        raise TypeError(f"n_bytes must be an int, not {type(n_bytes).__name__}")
    if n_bytes < 0:
        raise ValueError(f"n_bytes must be >= 0, got {n_bytes}")
    return n_bytes


# ---------------------------------------------------------------------------------------------
# CTR_DRBG with AES-256
# ---------------------------------------------------------------------------------------------
_KEYLEN = 32
_BLOCKLEN = 16
_SEEDLEN = _KEYLEN + _BLOCKLEN  # 48
_MASK128 = (1 << 128) - 1
_ZERO_BLOCKS = bytes(MAX_REQUEST_BYTES + _BLOCKLEN)
_DF_KEY = bytes(range(_KEYLEN))


def _aes_ecb(key: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _block_cipher_df(data: bytes, n_bytes: int) -> bytes:
    """Block_Cipher_df (SP 800-90A §10.3.2) with AES-256; BCC is CBC-MAC with a zero IV."""
    s = len(data).to_bytes(4, "big") + n_bytes.to_bytes(4, "big") + data + b"\x80"
    s += b"\x00" * (-len(s) % _BLOCKLEN)
    temp = b""
    i = 0
    while len(temp) < _SEEDLEN:
        iv = i.to_bytes(4, "big") + b"\x00" * (_BLOCKLEN - 4)
        enc = Cipher(algorithms.AES(_DF_KEY), modes.CBC(b"\x00" * _BLOCKLEN)).encryptor()
        temp += (enc.update(iv + s) + enc.finalize())[-_BLOCKLEN:]
        i += 1
    key, x = temp[:_KEYLEN], temp[_KEYLEN:_SEEDLEN]
    # X = E(K, X) repeatedly == CBC encryption of zero blocks with IV = X.
    n_blocks = -(-n_bytes // _BLOCKLEN)
    enc = Cipher(algorithms.AES(key), modes.CBC(x)).encryptor()
    return (enc.update(b"\x00" * (n_blocks * _BLOCKLEN)) + enc.finalize())[:n_bytes]


class CtrDrbg(_Drbg):
    """CTR_DRBG (SP 800-90A Rev.1 §10.2) with AES-256, with or without the derivation function.

    With the derivation function the entropy input must be at least 256 bits (any length
    up to 2^35 bits; entropy, nonce and personalization go through Block_Cipher_df).
    Without it the entropy input must be exactly seedlen = 384 bits, the nonce must be empty,
    and personalization / additional inputs are at most 384 bits (zero-padded, XORed in).
    """

    security_strength = 256
    _spare = _BLOCKLEN  # update_into wants block_size - 1 spare bytes

    def __init__(
        self,
        entropy: bytes,
        nonce: bytes = b"",
        personalization: bytes = b"",
        derivation_function: bool = True,
    ) -> None:
        self.derivation_function = bool(derivation_function)
        entropy = _as_bytes(entropy, "entropy")
        nonce = _as_bytes(nonce, "nonce")
        personalization = _as_bytes(personalization, "personalization")
        self._check_entropy(entropy)
        if self.derivation_function:
            seed = _block_cipher_df(entropy + nonce + personalization, _SEEDLEN)
        else:
            if nonce:
                raise ValueError("CTR_DRBG without the derivation function takes no nonce")
            seed = _xor(entropy, self._pad_seedlen(personalization, "personalization"))
        self._instantiate(seed, b"\x00" * _KEYLEN, 0)

    def export_state(self) -> tuple[bytes, int, int, bool]:
        """(Key, V, reseed_counter, derivation_function): enough to continue this stream elsewhere."""
        return (self._key, self._v, self._counter, self.derivation_function)

    @classmethod
    def from_state(cls, state: tuple[bytes, int, int, bool]) -> CtrDrbg:
        """Continue a stream from `export_state()` output (no new instantiation)."""
        key, v, counter, df = state
        if len(key) != _KEYLEN or not 0 <= int(v) <= _MASK128:
            raise ValueError("CTR_DRBG state is malformed")
        self = cls.__new__(cls)
        self.derivation_function = bool(df)
        self._key, self._v, self._counter = bytes(key), int(v), int(counter)
        return self

    def fill(self, buffer) -> None:
        """Write len(buffer) bytes of output into `buffer` as consecutive 2^16-byte requests."""
        view = _writable_bytes(buffer)
        n = view.nbytes
        spare = bytearray(MAX_REQUEST_BYTES + _BLOCKLEN)
        for pos in range(0, n, MAX_REQUEST_BYTES):
            take = min(n - pos, MAX_REQUEST_BYTES)
            if take % _BLOCKLEN == 0:
                self._request(view[pos : pos + take], take, b"")
            else:
                self._request(memoryview(spare), take, b"")
                view[pos : pos + take] = spare[:take]

    # -- internals --
    def _mode(self) -> str:
        return f"CTR_DRBG/AES-256 {'with' if self.derivation_function else 'without'} the derivation function"

    def _reseed_material(self, entropy: bytes, additional: bytes) -> bytes:
        if self.derivation_function:
            return _block_cipher_df(entropy + additional, _SEEDLEN)
        return _xor(entropy, self._pad_seedlen(additional, "additional input"))

    def _check_entropy(self, entropy: bytes) -> None:
        if self.derivation_function:
            if len(entropy) * 8 < self.security_strength:
                raise ValueError(
                    f"entropy input of {len(entropy) * 8} bits is shorter than the 256-bit "
                    "security strength of CTR_DRBG/AES-256"
                )
        elif len(entropy) != _SEEDLEN:
            raise ValueError(
                f"CTR_DRBG without the derivation function needs exactly {_SEEDLEN * 8} bits of "
                f"entropy input, got {len(entropy) * 8}"
            )

    @staticmethod
    def _pad_seedlen(data: bytes, what: str) -> bytes:
        if len(data) > _SEEDLEN:
            raise ValueError(f"{what} is longer than seedlen ({_SEEDLEN * 8} bits) without a derivation function")
        return data.ljust(_SEEDLEN, b"\x00")

    def _update(self, provided: bytes) -> None:
        v = self._v
        counters = b"".join(((v + i) & _MASK128).to_bytes(_BLOCKLEN, "big") for i in (1, 2, 3))
        temp = _xor(_aes_ecb(self._key, counters), provided)
        self._key = temp[:_KEYLEN]
        self._v = int.from_bytes(temp[_KEYLEN:], "big")

    def _request(self, out: memoryview, n: int, additional: bytes) -> None:
        """One standard Generate request (CTR_DRBG_Generate) writing n <= 2^16 bytes into out[:n].

        `out` must hold whole AES blocks (n rounded up to 16 bytes); bytes past n are scratch.
        """
        if self._counter > RESEED_INTERVAL:
            raise ReseedRequired("CTR_DRBG reached its reseed interval; reseed before generating")
        if additional:
            if self.derivation_function:
                additional = _block_cipher_df(additional, _SEEDLEN)
            else:
                additional = self._pad_seedlen(additional, "additional input")
            self._update(additional)
        else:
            additional = b"\x00" * _SEEDLEN
        if n:
            n_blocks = -(-n // _BLOCKLEN)
            counter = ((self._v + 1) & _MASK128).to_bytes(_BLOCKLEN, "big")
            # AES-CTR keystream = E(K, V+1) || E(K, V+2) ...; OpenSSL's CTR mode carries across
            # all 128 bits of the counter block, as SP 800-90A does with ctr_len = blocklen.
            # The closing CTR_DRBG_Update encrypts the next three counters under the same key,
            # so it is simply the next 48 bytes of this keystream: one cipher context per request.
            enc = Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor()
            enc.update_into(memoryview(_ZERO_BLOCKS)[: n_blocks * _BLOCKLEN], out)
            temp = _xor(enc.update(_ZERO_BLOCKS[:_SEEDLEN]), additional)
            self._key = temp[:_KEYLEN]
            self._v = int.from_bytes(temp[_KEYLEN:], "big")
        else:
            self._update(additional)
        self._counter += 1
