"""xfed/crypto stays free of torch, redis and model libraries, and of per-element Python loops over arrays."""

import pathlib
import re

CRYPTO = pathlib.Path(__file__).resolve().parents[2] / "xfed" / "crypto"
FORBIDDEN = re.compile(r"^\s*(?:import|from)\s+(torch|redis|transformers|peft|pickle)\b", re.MULTILINE)


def test_crypto_imports_neither_torch_nor_redis():
    files = sorted(CRYPTO.glob("*.py"))
    assert len(files) >= 5
    offenders = [f"{f.name}: {m.group(0).strip()}" for f in files for m in FORBIDDEN.finditer(f.read_text())]
    assert offenders == []


def test_crypto_never_iterates_arrays_element_by_element():
    # The patterns XFL used: np.vectorize(int), per-element int.from_bytes / int() over arrays, tolist().
    bad = re.compile(r"np\.vectorize|\.tolist\(\)|for \w+ in np\.nditer|\.flat\b|\.item\(\)")
    offenders = [f.name for f in CRYPTO.glob("*.py") if bad.search(f.read_text())]
    assert offenders == []
