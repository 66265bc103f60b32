"""ChatGLM2/3 state dict (THUDM names, fused query_key_value) -> GlmForCausalLM state dict."""
from __future__ import annotations

import re

import torch
from transformers import GlmConfig

from xfed.errors import ModelError
from xfed.models.checkpoint import cast_in_place

_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
    # THUDM int4/int8 folders: per-row scales of the packed linears (xfed.models.quantization)
    "self_attention.dense.weight_scale": "self_attn.o_proj.weight_scale",
    "mlp.dense_h_to_4h.weight_scale": "mlp.gate_up_proj.weight_scale",
    "mlp.dense_4h_to_h.weight_scale": "mlp.down_proj.weight_scale",
}
# GlmForCausalLM module names of THUDM's quantized linears (query_key_value is split into q, k, v)
NATIVE_QUANTIZED = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_up_proj", "mlp.down_proj")
_TOP_NAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
# Present in THUDM checkpoints but recomputed by the model (THUDM's own code ignores it too).
_IGNORED = ("transformer.rotary_pos_emb.inv_freq",)


def qkv_split_sizes(config: GlmConfig) -> tuple[int, int, int]:
    """Rows of the fused query_key_value belonging to q, k and v (THUDM order [q | k | v])."""
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    return q, kv, kv


def split_qkv(tensor: torch.Tensor, config: GlmConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = qkv_split_sizes(config)
    return tuple(t.contiguous() for t in torch.split(tensor, [q, k, v], dim=0))


def convert_state_dict(state: dict[str, torch.Tensor], config: GlmConfig, *,
                       key_files: dict[str, str], checkpoint: str, expected: dict[str, tuple[int, ...]],
                       dtype: torch.dtype, packed: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Rename/split THUDM weights; ModelError names the file and key of any extra, missing or misshaped one.

    `key_files` maps each key to the file it came from, `checkpoint` names the whole checkpoint
    (the .bin or the shard index), `expected` maps every GlmForCausalLM parameter to its shape,
    `packed` names the GlmForCausalLM weights that hold THUDM int4/int8 values (int8 allowed).
    """
    def where(key: str) -> str:
        return key_files.get(key, "checkpoint")

    out: dict[str, torch.Tensor] = {}
    # pop as we go: the source tensors are freed while the cast copies are made
    for key in list(state):
        tensor = state.pop(key)
        if key in _IGNORED:
            continue
        targets: list[tuple[str, torch.Tensor]]
        if key in _TOP_NAMES:
            targets = [(_TOP_NAMES[key], tensor)]
        else:
            match = _LAYER.match(key)
            if match is None or (match.group(2) not in _LAYER_NAMES
                                 and not match.group(2).startswith("self_attention.query_key_value.")):
                hint = " (a P-tuning prefix: load it with load_adapter)" if "prefix_encoder" in key else ""
                raise ModelError(f"{where(key)}: unexpected weight {key!r} for a ChatGLM2/3 model{hint}")
            layer, rest = match.groups()
            base = f"model.layers.{layer}."
            if rest.startswith("self_attention.query_key_value."):
                kind = rest.rsplit(".", 1)[1]
                if kind not in ("weight", "bias", "weight_scale"):
                    raise ModelError(f"{where(key)}: unexpected weight {key!r} for a ChatGLM2/3 model")
                want = sum(qkv_split_sizes(config))
                if tensor.shape[0] != want:
                    raise ModelError(f"{where(key)}: weight {key!r} has shape {tuple(tensor.shape)}, expected "
                                     f"{want} rows (q {config.num_attention_heads}x{config.head_dim} + k, v "
                                     f"{config.num_key_value_heads}x{config.head_dim})")
                q, k, v = split_qkv(tensor, config)
                targets = [(f"{base}self_attn.{p}_proj.{kind}", t) for p, t in zip("qkv", (q, k, v), strict=True)]
            else:
                targets = [(base + _LAYER_NAMES[rest], tensor)]
        for name, value in targets:
            if name not in expected:
                raise ModelError(f"{where(key)}: unexpected weight {key!r} (model has {config.num_hidden_layers} "
                                 "layers and these options)")
            if tuple(value.shape) != tuple(expected[name]):
                raise ModelError(f"{where(key)}: weight {key!r} has shape {tuple(tensor.shape)}, config.json "
                                 f"implies {tuple(expected[name])} for {name}")
            if not value.is_floating_point() and name not in packed:
                raise ModelError(f"{where(key)}: weight {key!r} has dtype {value.dtype}, expected floating point")
            # packed int8 weights and THUDM's scales keep their stored dtype
            out[name] = value if name.endswith("_scale") or not value.is_floating_point() else \
                (cast_in_place(value, dtype) if len(targets) == 1 else value.to(dtype))
    missing = list(dict.fromkeys(thudm_name(name) for name in expected if name not in out))
    if missing:
        raise ModelError(f"{checkpoint}: weight {missing[0]!r} missing ({len(missing)} missing in all)")
    return out


def thudm_name(native: str) -> str:
    """THUDM key a GlmForCausalLM parameter comes from (for messages)."""
    for thudm, nat in _TOP_NAMES.items():
        if nat == native:
            return thudm
    m = re.match(r"^model\.layers\.(\d+)\.(.+)$", native)
    if m:
        layer, rest = m.groups()
        for thudm, nat in _LAYER_NAMES.items():
            if nat == rest:
                return f"transformer.encoder.layers.{layer}.{thudm}"
        pm = re.match(r"self_attn\.[qkv]_proj\.(weight_scale|weight|bias)$", rest)
        if pm:
            return f"transformer.encoder.layers.{layer}.self_attention.query_key_value.{pm.group(1)}"
    return native

