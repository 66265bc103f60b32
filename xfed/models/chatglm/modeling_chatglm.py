"""ChatGLM-6B (GLM v1) as a native transformers causal LM, numerically equal to THUDM's remote code.

What makes v1 different from a Llama-style decoder, all reproduced here:
- 2-D rotary positions: each head is split in halves; the first is rotated by the token position, the
  second by the block position (0 in the context, 1, 2, ... from `<sop>` on). After the context every
  token takes the position of the mask token (`[MASK]`, else `[gMASK]`).
- prefix-LM attention: bidirectional over the context (block position 0), causal after it.
- residual = alpha * LN(x) + f(LN(x)) with THUDM's alpha = sqrt(2 * 28) (see the config's
  `alpha_num_layers`); lm_head tied to the word embeddings; tanh-GELU MLP; fused
  `query_key_value` with bias laid out per head as [q | k | v] (THUDM's module names are kept, so
  LoRA adapters on `query_key_value` apply 1:1).
- rotary inverse frequencies computed in fp32 and rounded to fp16, as THUDM's RotaryEmbedding does
  (THUDM ignores the copy stored in the checkpoint, and so do we).

Positions are derived from `input_ids` and an ordinary 2-D `attention_mask`, counting from a row's
first real token (THUDM's left padding); `position_ids` of shape [batch, 2, seq] may also be passed.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_chatglm import ChatGLM6BConfig
from .layers import ChatGLM6BBlock, rotary_cos_sin, rotary_inv_freq, v1_position_ids

# Attribute under which a cache remembers the last (position, block position) of each row, so that a
# forward on a cache continues THUDM's generation rule (same position, block position + 1).
_LAST_POSITION_ATTR = "_chatglm6b_last_position"


class ChatGLM6BPreTrainedModel(PreTrainedModel):
    """Weight init, checkpointing and attention-backend flags shared by the v1 model classes."""

    config_class = ChatGLM6BConfig
    config: ChatGLM6BConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ChatGLM6BBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    # THUDM checkpoints carry rotary buffers that THUDM's own code ignores; so do we.
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if getattr(module, "bits", None) is not None:  # a packed THUDM-quantized linear: nothing to draw
            return
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ChatGLM6BModel(ChatGLM6BPreTrainedModel):
    """The GLM v1 stack: word embeddings, blocks, final LayerNorm (THUDM's `transformer` module)."""

    def __init__(self, config: ChatGLM6BConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([ChatGLM6BBlock(config, i) for i in range(config.num_hidden_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def _positions(self, input_ids, attention_mask_new, past_key_values, past_len, seq_len, batch, device):
        """Position ids [b, 2, seq] of the new tokens when the caller gave none."""
        last = getattr(past_key_values, _LAST_POSITION_ATTR, None) if past_len else None
        if last is not None and last.shape[0] == batch:
            # continuing a sequence: THUDM keeps the position and advances the block position
            step = torch.arange(1, seq_len + 1, device=device)
            return torch.stack((last[:, 0:1].expand(batch, seq_len), last[:, 1:2] + step), dim=1)
        if input_ids is None:
            raise ValueError("ChatGLM-6B needs input_ids (or position_ids) to derive its 2-D positions")
        cfg = self.config
        return v1_position_ids(
            input_ids,
            attention_mask_new,
            bos_token_id=cfg.bos_token_id,
            mask_token_id=cfg.mask_token_id,
            gmask_token_id=cfg.gmask_token_id,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        cfg = self.config
        output_attentions = bool(output_attentions if output_attentions is not None else cfg.output_attentions)
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else cfg.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else cfg.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, seq_len = inputs_embeds.shape[:2]
        device = inputs_embeds.device

        if past_key_values is not None and not isinstance(past_key_values, Cache):
            # legacy tuple-of-(key, value) input, e.g. a P-tuning prefix built by hand
            past_key_values = DynamicCache(past_key_values)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=cfg)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        total = past_len + seq_len

        # 2-D mask over [past | new]; a mask covering only the new tokens attends to the whole past
        if attention_mask is None:
            key_valid = torch.ones(batch, total, dtype=torch.bool, device=device)
        else:
            key_valid = attention_mask.to(device=device).bool()
            if key_valid.shape[-1] == seq_len and past_len:
                key_valid = torch.cat((key_valid.new_ones(batch, past_len), key_valid), dim=-1)
            if key_valid.shape != (batch, total):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({batch}, {total}) "
                    f"for {past_len} cached and {seq_len} new tokens"
                )
        new_valid = key_valid[:, past_len:]

        if position_ids is None:
            position_ids = self._positions(input_ids, new_valid, past_key_values, past_len, seq_len, batch, device)
        elif position_ids.dim() != 3 or tuple(position_ids.shape) != (batch, 2, seq_len):
            raise ValueError(
                f"ChatGLM-6B position_ids are [batch, 2, seq] (position, block position), got shape "
                f"{tuple(position_ids.shape)} for {batch} x {seq_len} tokens; omit them to derive them"
            )
        position_ids = position_ids.to(device)
        if past_key_values is not None and use_cache:
            setattr(past_key_values, _LAST_POSITION_ATTR, position_ids[:, :, -1].detach())

        # prefix-LM: a key is visible if it is real and either not after the query or in the context
        # (block position 0). Past keys always precede; the diagonal keeps padding rows finite.
        q_idx = torch.arange(seq_len, device=device)[:, None] + past_len
        k_idx = torch.arange(total, device=device)[None, :]
        causal = k_idx <= q_idx
        ctx_key = torch.ones(batch, total, dtype=torch.bool, device=device)
        ctx_key[:, past_len:] = position_ids[:, 1, :] == 0
        allowed = key_valid[:, None, :] & (causal[None] | ctx_key[:, None, :])
        allowed = allowed | (k_idx == q_idx)[None]
        attn_mask = allowed[:, None, :, :]

        inv_freq = rotary_inv_freq(self._rotary_dim(), cfg.rope_theta, device=device)
        rows = 2 if cfg.position_encoding_2d else 1
        cos, sin = rotary_cos_sin(position_ids[:, :rows, :], inv_freq, inputs_embeds.dtype)  # [b, rows, seq, rot]

        # Checkpointed layers may not write to a cache (the replay would append twice): hand them
        # what the cache holds (a P-tuning prefix) as plain tensors instead.
        checkpointing = self.gradient_checkpointing and self.training
        hidden = inputs_embeds
        all_hidden = [] if output_hidden_states else None
        all_attn = [] if output_attentions else None
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden.append(hidden)
            cache, prefix_kv = past_key_values, None
            if checkpointing or not use_cache:
                cache = None
                if past_len:
                    entry = past_key_values.layers[i]
                    prefix_kv = (entry.keys, entry.values)
            hidden, weights = layer(
                hidden, cos, sin, attn_mask, cache=cache, prefix_kv=prefix_kv, output_attentions=output_attentions
            )
            if output_attentions:
                all_attn.append(weights)
        hidden = self.final_layernorm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attn) if all_attn is not None else None,
        )

    def _rotary_dim(self) -> int:
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        return head_dim // 2 if self.config.position_encoding_2d else head_dim


class ChatGLM6BForCausalLM(ChatGLM6BPreTrainedModel, GenerationMixin):
    """ChatGLM-6B with its LM head: `forward(input_ids, attention_mask, labels)` and `generate`."""

    _tied_weights_keys = {"lm_head.weight": "transformer.word_embeddings.weight"}

    def __init__(self, config: ChatGLM6BConfig):
        super().__init__(config)
        self.transformer = ChatGLM6BModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:, :]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep, :]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                num_items_in_batch=kwargs.get("num_items_in_batch"),
            )
        if return_dict is False:
            result = (logits, out.past_key_values)
            return ((loss,) + result) if loss is not None else result
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # Our forward derives THUDM's 2-D positions itself (from the prompt, then from the cache);
        # generate's 1-D running positions would be wrong for v1.
        return None

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        # THUDM-layout position_ids [b, 2, seq] given to generate(): new tokens keep the position and
        # advance the block position (transformers would advance both).
        position_ids = model_kwargs.pop("position_ids", None)
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        if position_ids is not None:
            last = position_ids[..., -1:]
            step = torch.arange(1, num_new_tokens + 1, device=last.device)
            new = torch.stack((last[:, 0].expand(-1, num_new_tokens), last[:, 1] + step), dim=1)
            model_kwargs["position_ids"] = torch.cat((position_ids, new), dim=-1)
        return model_kwargs
