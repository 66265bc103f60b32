"""Secure-aggregation primitives: NIST DRBGs, RFC 7919 Diffie-Hellman, fixed-point rings, one-time pads.

numpy + stdlib + gmpy2 (+ `cryptography` for AES only); this package imports neither torch nor redis.
"""

from xfed.crypto.dh import GROUP_BITS, DhGroup, generate_keypair, named_group, shared_secret, validate_public
from xfed.crypto.drbg import (
    MAX_REQUEST_BYTES,
    RESEED_INTERVAL,
    CtrDrbg,
    HmacDrbg,
    ReseedRequired,
    normalize_hash_name,
)
from xfed.crypto.fixedpoint import (
    SUPPORTED_BITS,
    add_into,
    add_limbs,
    check_params,
    decode,
    decode_limbs,
    default_frac_bits,
    encode,
    encoded_shape,
    sub_into,
    sub_limbs,
    words_per_element,
)
from xfed.crypto.otp import mask, unmask_sum
from xfed.crypto.pad_workers import PadWorkers, available_cores, get_pad_workers, shutdown_pad_workers
from xfed.crypto.pads import (
    CSPRNGS,
    DEFAULT_LANES,
    PROTOCOL_LABEL,
    PadStream,
    derivation_inputs,
    pad_stream,
    pad_words,
    sign_for,
)

__all__ = [
    # DRBGs
    "HmacDrbg", "CtrDrbg", "MAX_REQUEST_BYTES", "RESEED_INTERVAL", "ReseedRequired", "normalize_hash_name",
    # Diffie-Hellman
    "DhGroup", "GROUP_BITS", "named_group", "generate_keypair", "validate_public", "shared_secret",
    # fixed point
    "encode", "decode", "add_into", "sub_into", "default_frac_bits", "encoded_shape", "SUPPORTED_BITS",
    "check_params", "words_per_element", "add_limbs", "sub_limbs", "decode_limbs",
    # one-time pads
    "PadStream", "pad_stream", "pad_words", "derivation_inputs", "mask", "unmask_sum", "sign_for",
    "CSPRNGS", "DEFAULT_LANES", "PROTOCOL_LABEL",
    # pad worker processes
    "PadWorkers", "available_cores", "get_pad_workers", "shutdown_pad_workers",
]
