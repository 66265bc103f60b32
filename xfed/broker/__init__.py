"""The Redis layer: the only package that imports `redis` (connection, keys, frames, channels, streams...)."""
