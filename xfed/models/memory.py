"""Will a model fit? Estimate a folder's loaded size per dtype / quantization before loading it, pick the
CPU default dtype, and refuse with one line (needed vs available, what would fit) instead of an OOM kill."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from xfed.errors import ModelError
from xfed.models.checkpoint import weight_files
from xfed.models.family import detect_family, read_config

GB = 1e9
_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
# Small models keep exact fp32 on CPU: bf16 buys nothing below this and tiny-model results stay exact.
BF16_DEFAULT_ABOVE = 2 * 2**30
# What loading and a training step need beyond the weights (activations, optimizer state of the
# adapter, allocator slack): a fraction of the weights, at least this much.
HEADROOM, MIN_HEADROOM = 0.10, 0.5 * GB


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16); Linux /proc/cpuinfo flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def available_bytes(device: Any = None) -> int:
    """Free memory for a load: CUDA free memory, else MemAvailable (capped by a cgroup limit if any)."""
    if device is not None and torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return int(avail)


def _parameter_counts(folder: Path, family: str, cfg: dict[str, Any]) -> tuple[int, int, int] | None:
    """(float params, quantizable linear params, their output rows) of a THUDM ChatGLM folder, from its
    skeleton on the meta device; None for other families."""
    if family == "chatglm":
        from xfed.models.chatglm import ChatGLM6BForCausalLM, config_from_thudm
        from xfed.models.quantization import V1_LINEARS as linears
        raw = {k: v for k, v in cfg.items() if not k.startswith("quantization")}
        with torch.device("meta"):
            model = ChatGLM6BForCausalLM(config_from_thudm(raw, str(folder / "config.json")))
        layers = model.transformer.layers
    elif family in ("chatglm2", "chatglm3") and cfg.get("model_type") == "chatglm":
        from transformers import GlmForCausalLM

        from xfed.models.chatglm3.config import glm_config_from_thudm
        from xfed.models.chatglm3.weights import NATIVE_QUANTIZED as linears
        with torch.device("meta"):
            model = GlmForCausalLM(glm_config_from_thudm(cfg, source=str(folder / "config.json"), family=family))
        layers = model.model.layers
    else:
        return None
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    qparams = rows = 0
    for layer in layers:
        for name in linears:
            w = layer.get_submodule(name).weight
            qparams += w.numel()
            rows += w.shape[0]
    return total - qparams, qparams, rows


def estimate_bytes(folder: str | Path, dtype: torch.dtype, quantization_bit: int | None = None) -> int:
    """Bytes of weights once loaded as `dtype` (packed linears counted at `quantization_bit`, or at the
    folder's own quantization_bit). THUDM folders: counted from the architecture; others: from the
    weight files, scaled from the stored dtype."""
    folder = Path(folder)
    cfg = read_config(folder)
    family = detect_family(folder)
    bits = quantization_bit or int(cfg.get("quantization_bit") or 0)
    counts = _parameter_counts(folder, family, cfg)
    width = _BYTES.get(dtype, 4)
    if counts is not None:
        floats, qparams, rows = counts
        if bits:
            return floats * width + qparams * bits // 8 + rows * 2
        return (floats + qparams) * width
    stored = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32").removeprefix("torch.")
    stored_width = 2 if stored in ("float16", "bfloat16") else 4
    files = sum(p.stat().st_size for p in weight_files(folder) if p.suffix != ".json")
    return files * width // stored_width


def needed_bytes(weights: int) -> int:
    return weights + max(int(weights * HEADROOM), int(MIN_HEADROOM))


def choose_cpu_dtype(folder: str | Path, quantization_bit: int | None = None) -> torch.dtype:
    """The CPU default: fp32 for small models; bf16 where the CPU has native bf16, else fp32 (the
    fit check then says whether it fits)."""
    fp32 = estimate_bytes(folder, torch.float32, quantization_bit)
    if fp32 <= BF16_DEFAULT_ABOVE or not cpu_has_bf16():
        return torch.float32
    return torch.bfloat16


def check_fits(folder: str | Path, dtype: torch.dtype, *, quantization_bit: int | None = None,
               device: Any = None, available: int | None = None) -> int:
    """Needed bytes; ModelError (one line: needed vs available, which dtype / quantization would fit)
    when the model cannot be loaded here."""
    folder = Path(folder)
    need = needed_bytes(estimate_bytes(folder, dtype, quantization_bit))
    have = available_bytes(device) if available is None else available
    if need <= have:
        return need
    options = []
    file_bits = int(read_config(folder).get("quantization_bit") or 0)
    for label, dt, bits in (("dtype float32", torch.float32, None), ("dtype bfloat16", torch.bfloat16, None),
                            ("quantization_bit 8", torch.bfloat16, 8), ("quantization_bit 4", torch.bfloat16, 4)):
        if (file_bits and bits not in (None, file_bits)) or (dt, bits) == (dtype, quantization_bit):
            continue
        try:
            size = needed_bytes(estimate_bytes(folder, dt, bits))
        except ModelError:
            continue
        if size <= have:
            options.append(f"{label} (~{size / GB:.1f} GB)")
    where = "GPU" if device is not None and torch.device(device).type == "cuda" else "RAM"
    what = f"{str(dtype).removeprefix('torch.')}" + (f", {quantization_bit}-bit" if quantization_bit else "")
    hint = f"; would fit: {', '.join(options)}" if options else "; nothing xfed can load would fit here"
    raise ModelError(f"{folder}: the model needs ~{need / GB:.1f} GB ({what}) but {have / GB:.1f} GB of {where} "
                     f"is available{hint}")
