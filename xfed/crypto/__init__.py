"""Secure-aggregation primitives: NIST DRBGs, RFC 7919 Diffie-Hellman, fixed-point rings, one-time pads."""

from xfed.crypto.drbg import MAX_REQUEST_BYTES, RESEED_INTERVAL, CtrDrbg, HmacDrbg, ReseedRequired

__all__ = ["CtrDrbg", "HmacDrbg", "MAX_REQUEST_BYTES", "RESEED_INTERVAL", "ReseedRequired"]
