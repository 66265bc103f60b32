"""Secure-aggregation primitives: NIST DRBGs, RFC 7919 Diffie-Hellman, fixed-point rings, one-time pads."""

from xfed.crypto.dh import GROUP_BITS, DhGroup, generate_keypair, named_group, shared_secret, validate_public
from xfed.crypto.drbg import MAX_REQUEST_BYTES, RESEED_INTERVAL, CtrDrbg, HmacDrbg, ReseedRequired

__all__ = [
    "DhGroup", "GROUP_BITS", "generate_keypair", "named_group", "shared_secret", "validate_public",
    "CtrDrbg", "HmacDrbg", "MAX_REQUEST_BYTES", "RESEED_INTERVAL", "ReseedRequired"]
