"""The layers of ChatGLM-6B (GLM v1): 2-D rotary positions, fused-QKV attention, tanh-GELU MLP, the block.

See modeling_chatglm.py for what makes v1 different from a Llama-style decoder; the model classes
assemble these layers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_chatglm import ChatGLM6BConfig

# Attribute under which a cache remembers the last (position, block position) of each row, so that a


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """THUDM's `gelu_impl`, 0.5x(1 + tanh(0.79788456 x (1 + 0.044715 x^2))): torch's fused tanh-GELU is
    the same formula and keeps one activation for backward instead of six."""
    return F.gelu(x, approximate="tanh")


def rotary_inv_freq(dim: int, base: float, device=None) -> torch.Tensor:
    """THUDM's inverse frequencies: computed in fp32, then rounded to fp16 (kept in fp16)."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=device).float() / dim))
    return inv.half()


def rotary_cos_sin(
    positions: torch.Tensor, inv_freq_fp16: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [..., dim] in `dtype` for integer positions, computed as THUDM's RotaryEmbedding does.

    THUDM's buffer is fp16 and follows the model's dtype: an fp32 model takes fp32 angles from the
    fp16-rounded frequencies, an fp16 model takes fp16 angles and fp16 cos/sin. (A bf16 model gets
    the fp32 path here: THUDM's bf16 arange is inexact beyond position 256.)
    """
    if dtype == torch.float16:
        angles = positions.to(torch.float16).unsqueeze(-1) * inv_freq_fp16.to(torch.float16)
    else:
        angles = positions.float().unsqueeze(-1) * inv_freq_fp16.float()
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def v1_position_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    bos_token_id: int,
    mask_token_id: int,
    gmask_token_id: int,
) -> torch.Tensor:
    """THUDM ChatGLM-6B 2-D position ids [batch, 2, seq] for whole (possibly left-padded) prompts.

    Follows THUDM's tokenizer: positions count from a row's first real token; the context ends at the
    first `<sop>` (none: the whole row is context); after it, the position is that of `[MASK]` (else
    `[gMASK]`) and the block position counts 1, 2, ... Padding gets position 0, block 0.
    """
    b, s = input_ids.shape
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    idx = (valid.long().cumsum(-1) - 1).clamp(min=0)
    none = s + 1

    def first(token_id: int) -> torch.Tensor:
        hit = (input_ids == token_id) & valid
        return torch.where(hit, idx, torch.full_like(idx, none)).min(dim=-1).values

    ctx = first(bos_token_id)
    ctx = torch.where(ctx == none, valid.sum(-1), ctx)
    mpos = first(mask_token_id)
    mpos = torch.where(mpos == none, first(gmask_token_id), mpos)
    after = (idx >= ctx[:, None]) & valid
    pos = torch.where(after & (mpos[:, None] != none), mpos[:, None].expand(b, s), idx)
    block = torch.where(after, idx - ctx[:, None] + 1, torch.zeros_like(idx))
    pos = torch.where(valid, pos, torch.zeros_like(pos))
    return torch.stack((pos, block), dim=1)


class ChatGLM6BAttention(nn.Module):
    """Self-attention with fused `query_key_value` (per head [q|k|v]), 2-D rotary and SDPA."""

    def __init__(self, config: ChatGLM6BConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [b, heads, seq, head_dim]; cos/sin: [b, n_rot, seq, rot_dim] with n_rot in {1, 2}
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if cos.shape[1] == 2:
            x1, x2 = x.chunk(2, dim=-1)
            c1, c2 = cos[:, 0:1], cos[:, 1:2]
            s1, s2 = sin[:, 0:1], sin[:, 1:2]
            x1 = x1 * c1 + rotate_half(x1) * s1
            x2 = x2 * c2 + rotate_half(x2) * s2
            return torch.cat((x1, x2), dim=-1)
        return x * cos + rotate_half(x) * sin

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, s, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(b, s, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.transpose(1, 2).split(self.head_dim, dim=-1)
        q = self._rotate(q, cos, sin)
        k = self._rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        elif prefix_kv is not None:
            # past keys (e.g. a P-tuning prefix) are used as stored: never rotated again
            k = torch.cat((prefix_kv[0].to(k.dtype), k), dim=-2)
            v = torch.cat((prefix_kv[1].to(v.dtype), v), dim=-2)
        scale = 1.0 / math.sqrt(self.head_dim)
        weights = None
        if output_attentions or self.config._attn_implementation == "eager":
            scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
            if attention_mask is not None:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1).to(q.dtype)
            out = torch.matmul(weights, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=scale)
        out = out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.dense(out), (weights if output_attentions else None)


class ChatGLM6BMLP(nn.Module):
    """h -> 4h (tanh-GELU) -> h, with biases (THUDM's `GLU` module, which is not gated)."""

    def __init__(self, config: ChatGLM6BConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(gelu_tanh(self.dense_h_to_4h(x)))


class ChatGLM6BBlock(GradientCheckpointingLayer):
    """GLM block: residual on the normed input, scaled by alpha = sqrt(2 * config.alpha_num_layers)."""

    def __init__(self, config: ChatGLM6BConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ChatGLM6BAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ChatGLM6BMLP(config)
        self.alpha = (2 * config.alpha_num_layers) ** 0.5

    def forward(self, hidden_states: torch.Tensor, *attn_args, **attn_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(new hidden states, attention weights or None); after the normed input, the arguments are
        ChatGLM6BAttention.forward's (cos, sin, attention_mask, cache, prefix_kv, output_attentions)."""
        attn_in = self.input_layernorm(hidden_states)
        attn_out, weights = self.attention(attn_in, *attn_args, **attn_kwargs)
        hidden_states = attn_in * self.alpha + attn_out
        mlp_in = self.post_attention_layernorm(hidden_states)
        return mlp_in * self.alpha + self.mlp(mlp_in), weights
