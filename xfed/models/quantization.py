"""THUDM's weight-only int4/int8 quantization (chatglm-6b-int4, chatglm2-6b-int4 …), in pure torch.

Layout (THUDM's `QuantizedLinear`, see ../shared/fixtures/chatglm/README.md):
- `weight`: int8; 8-bit (out, in), 4-bit (out, in/2) with two's-complement nibbles, the even column
  in the HIGH nibble of each byte.
- `weight_scale`: (out,) fp16 or fp32, row absmax / (2**(bits-1) - 1); `bias` stays float.

The weights stay packed in memory. Every forward dequantizes `W = float32(scale)[:, None] * q` (THUDM's
CPU kernels `extract_int{4,8}_weight_to_float`) and multiplies; a custom autograd function keeps only
the packed tensors for backward and dequantizes again there, so LoRA / P-tuning training on the frozen
base does not hold a float copy of every layer. The fp32 product scale*q (|q| <= 127) is exact, so
casting it to fp16 afterwards equals THUDM's fp16 CUDA dequantization bit for bit.
"""
from __future__ import annotations

import torch
from torch import nn

from xfed.errors import ModelError

SUPPORTED_BITS = (4, 8)
# The four linears of every layer THUDM quantizes (module names inside a layer).
V1_LINEARS = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
V2_LINEARS = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


def check_bits(bits: object, label: str) -> int:
    """The bit width as an int; ModelError naming `label` (file and key) for anything but 4 or 8."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ModelError(f"{label} = {bits!r} is not supported (THUDM weight-only quantization has 4 and 8 bits)")
    return bits


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(out, in/2) int8 of two's-complement nibble pairs -> (out, in) int8 in [-8, 7], high nibble first."""
    hi = packed >> 4  # arithmetic shift on int8 keeps the sign
    lo = (packed << 4) >> 4
    return torch.stack((hi, lo), dim=-1).reshape(packed.shape[0], packed.shape[1] * 2)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(out, in) int8 in [-8, 7] -> (out, in/2) int8, column 2j in the high nibble (THUDM's compress_int4_weight)."""
    q = q.to(torch.int16)
    return (((q[:, 0::2] << 4) & 0xF0) | (q[:, 1::2] & 0x0F)).to(torch.uint8).view(torch.int8)


def dequantize(weight: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """THUDM's `float32(scale)[:, None] * q` (then cast to `dtype`, exact rounding of an exact product)."""
    if bits == 4:  # unpack straight into the float matrix: no int8 copy of the whole weight
        w = torch.empty(weight.shape[0], weight.shape[1], 2, dtype=torch.float32, device=weight.device)
        w[..., 0] = weight >> 4  # arithmetic shifts on int8 keep the sign
        w[..., 1] = (weight << 4) >> 4
        w = w.view(weight.shape[0], -1)
    else:
        w = weight.to(torch.float32)
    w.mul_(scale.to(torch.float32)[:, None])
    return w if dtype == torch.float32 else w.to(dtype)


def quantize(weight: torch.Tensor, bits: int, quantize_dtype: torch.dtype = torch.float32
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed int8 weight, fp16 scale) of a float (out, in) weight with THUDM's arithmetic.

    scale = row absmax / (2**(bits-1) - 1) computed in fp16 (the checkpoint's dtype); q = round half to
    even of w / scale with the division in `quantize_dtype`: float32 on THUDM's CPU path (ChatGLM-6B's
    quantize()), float16 on its GPU path (ChatGLM2/3's half_weight_to_int)."""
    check_bits(bits, "quantize bits")
    w16 = weight.detach().to(torch.float16)
    qmax = float(2 ** (bits - 1) - 1)
    scale16 = (w16.abs().amax(dim=-1).to(torch.float32) / qmax).to(torch.float16)
    ratio = w16.to(torch.float32) / scale16.to(torch.float32)[:, None]
    if quantize_dtype == torch.float16:
        ratio = ratio.to(torch.float16).to(torch.float32)
    q = torch.round(ratio).to(torch.int8)  # torch.round: half to even, as THUDM's torch.round
    if bits == 4:
        if q.shape[1] % 2:
            raise ModelError(f"quantize: 4-bit packing needs an even input size, got {q.shape[1]}")
        q = pack_int4(q)
    return q.contiguous(), scale16.contiguous()


# Weight elements dequantized at a time: a layer is dequantized in row blocks of ~16 MiB fp32, each
# multiplied while it is in cache, so a forward never holds a float copy of a whole 6B layer (268 MB).
BLOCK_ELEMENTS = 1 << 22


def _row_blocks(out_features: int, in_features: int):
    rows = max(1, BLOCK_ELEMENTS // max(in_features, 1))
    return [(r, min(r + rows, out_features)) for r in range(0, out_features, rows)]


class _DequantLinear(torch.autograd.Function):
    """x @ dequantize(W).T block by block, saving only the packed weight for backward (W has no gradient)."""

    @staticmethod
    def forward(ctx, x, weight, scale, bits):  # noqa: D401 - autograd signature
        ctx.save_for_backward(weight, scale)
        ctx.bits = bits
        out_features, in_features = scale.shape[0], x.shape[-1]
        x2 = x.reshape(-1, in_features)
        out = x2.new_empty(x2.shape[0], out_features)
        for r0, r1 in _row_blocks(out_features, in_features):
            out[:, r0:r1] = x2 @ dequantize(weight[r0:r1], scale[r0:r1], bits, x.dtype).t()
        return out.reshape(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx, grad_out):
        weight, scale = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        out_features = scale.shape[0]
        in_features = weight.shape[1] * (2 if ctx.bits == 4 else 1)
        g2 = grad_out.reshape(-1, out_features)
        grad_x = g2.new_zeros(g2.shape[0], in_features)
        for r0, r1 in _row_blocks(out_features, in_features):
            grad_x.addmm_(g2[:, r0:r1], dequantize(weight[r0:r1], scale[r0:r1], ctx.bits, grad_out.dtype))
        return grad_x.reshape(*grad_out.shape[:-1], in_features), None, None, None


class QuantizedLinear(nn.Linear):
    """A frozen THUDM-quantized linear: packed int8 `weight`, per-row `weight_scale`, float `bias`.

    An nn.Linear subclass so peft wraps it with its ordinary LoRA layer and 'all-linear' targets find it;
    `weight` is a non-trainable int8 Parameter. Casting the module (`.to(bfloat16)`, `.half()`) moves
    but never casts `weight_scale`, so THUDM's scales stay exact."""

    def __init__(self, in_features: int, out_features: int, bits: int, *, bias: bool = True,
                 scale_dtype: torch.dtype = torch.float16, bias_dtype: torch.dtype = torch.float32,
                 device=None) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.bits = in_features, out_features, check_bits(bits, "QuantizedLinear bits")
        cols = in_features // 2 if bits == 4 else in_features
        self.weight = nn.Parameter(torch.empty(out_features, cols, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=scale_dtype, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=bias_dtype, device=device))
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, quantize_dtype: torch.dtype = torch.float32
                    ) -> QuantizedLinear:
        """Quantize a float nn.Linear with THUDM's arithmetic (its bias is kept as is)."""
        q, scale = quantize(linear.weight.data, bits, quantize_dtype)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features, module.bits = linear.in_features, linear.out_features, bits
        module.weight = nn.Parameter(q.to(linear.weight.device), requires_grad=False)
        module.register_buffer("weight_scale", scale.to(linear.weight.device))
        module.bias = linear.bias
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _DequantLinear.apply(x, self.weight, self.weight_scale, self.bits)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.weight, self.weight_scale, self.bits, dtype)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) casts every floating buffer: keep weight_scale's dtype, follow the device only.
        scale = self._buffers.pop("weight_scale")
        try:
            super()._apply(fn, recurse)
        finally:
            probe = fn(torch.zeros(0, dtype=torch.int8, device=scale.device))
            self._buffers["weight_scale"] = scale.to(probe.device)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, " \
               f"bias={self.bias is not None}"

    def reset_parameters(self) -> None:  # nn.Linear.__init__ is never called; nothing random to draw
        return None


def packed_cols(in_features: int, bits: int) -> int:
    return in_features // 2 if bits == 4 else in_features


def check_quantized(key: str, weight: torch.Tensor, scale: torch.Tensor | None, out_features: int,
                    in_features: int, bits: int, where: str) -> None:
    """One line naming the file and key for a packed weight / scale that does not fit THUDM's layout."""
    if scale is None:
        raise ModelError(f"{where}: weight {key + '_scale'!r} missing (quantization_bit {bits}: every quantized "
                         f"{key!r} needs its per-row scale)")
    if weight.dtype != torch.int8:
        raise ModelError(f"{where}: weight {key!r} has dtype {weight.dtype}, quantization_bit {bits} expects int8")
    want = (out_features, packed_cols(in_features, bits))
    if tuple(weight.shape) != want:
        packing = f"two 4-bit values per byte: in/2 = {want[1]} columns" if bits == 4 else "one value per byte"
        raise ModelError(f"{where}: weight {key!r} has shape {tuple(weight.shape)}, quantization_bit {bits} "
                         f"implies {want} ({packing})")
    if not scale.is_floating_point() or tuple(scale.shape) != (out_features,):
        raise ModelError(f"{where}: weight {key + '_scale'!r} has shape {tuple(scale.shape)} and dtype "
                         f"{scale.dtype}, expected ({out_features},) float16/float32")


def packed_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (packed weights count as stored)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def replace_linears(parent: nn.Module, names: tuple[str, ...], factory) -> None:
    """Replace the dotted submodules `names` of `parent` by factory(old_linear)."""
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        owner = parent.get_submodule(owner_name) if owner_name else parent
        setattr(owner, attr, factory(getattr(owner, attr)))



def file_bits(raw: dict, source: str) -> int:
    """quantization_bit of a config.json (0: not quantized); ModelError for a width THUDM has no kernel for."""
    bits = raw.get("quantization_bit")
    if bits in (None, 0, False):
        return 0
    check_bits(bits, f"{source}: key 'quantization_bit'")
    if raw.get("quantization_embeddings"):
        raise ModelError(f"{source}: key 'quantization_embeddings' = true (THUDM's int4-qe, quantized embeddings) "
                         "is not supported; use the folder with float embeddings (chatglm-6b-int4)")
    return bits


def wanted_bits(raw: dict, requested: int | None, source: str) -> tuple[int, bool]:
    """(bits the model runs with, whether the loader quantizes the float weights itself)."""
    on_disk = file_bits(raw, source)
    if not requested:
        return on_disk, False
    check_bits(requested, "quantization_bit")
    if on_disk and on_disk != requested:
        raise ModelError(f"{source}: the folder is already quantized to {on_disk} bits; quantization_bit "
                         f"{requested} cannot re-quantize it (use the fp16 weights or quantization_bit {on_disk})")
    return requested, not on_disk


def install_quantized(model: nn.Module, layers, linears: tuple[str, ...], bits: int, prefix: str) -> list[str]:
    """Swap `linears` of every layer for empty QuantizedLinear modules (on the model's meta skeleton);
    returns their full module names (`prefix` + index + name)."""
    names = []
    for i, layer in enumerate(layers):
        def make(old: nn.Linear) -> QuantizedLinear:
            return QuantizedLinear(old.in_features, old.out_features, bits, bias=old.bias is not None,
                                   device=old.weight.device)
        replace_linears(layer, linears, make)
        names += [f"{prefix}{i}.{name}" for name in linears]
    return names


def quantize_state(state: dict[str, torch.Tensor], modules: list[str], bits: int,
                   quantize_dtype: torch.dtype) -> None:
    """Replace each `<module>.weight` in `state` by its packed int8 form and add `<module>.weight_scale`
    (in place, one tensor at a time, so a float copy of the whole model never exists)."""
    for module in modules:
        key = module + ".weight"
        if key in state:
            state[key], state[key + "_scale"] = quantize(state[key], bits, quantize_dtype)


def check_state(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]], bits: int, where) -> None:
    """Validate every quantized `<module>.weight` (shapes: module -> (out, in)); `where(key)` names its file."""
    for module, (out_f, in_f) in shapes.items():
        key = module + ".weight"
        if key not in state:
            continue  # reported as a missing weight by the caller
        check_quantized(key, state[key], state.get(key + "_scale"), out_f, in_f, bits, where(key))
