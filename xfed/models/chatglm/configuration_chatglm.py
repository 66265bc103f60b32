"""Configuration of ChatGLM-6B (v1) as a transformers model of our own (model_type "chatglm6b")."""
from __future__ import annotations

from transformers import PretrainedConfig


class ChatGLM6BConfig(PretrainedConfig):
    """Hyper-parameters of a ChatGLM-6B (GLM v1) causal LM.

    Canonical names follow transformers (`num_hidden_layers`, `intermediate_size` ...); THUDM's names
    (`num_layers`, `inner_hidden_size`, `layernorm_epsilon`, `max_sequence_length`) read and write the
    same values through `attribute_map`, so code written against THUDM's config keeps working.

    Args (defaults are ChatGLM-6B's):
        vocab_size (130528), hidden_size (4096), num_hidden_layers (28), num_attention_heads (32),
        intermediate_size (16384): MLP width, layer_norm_eps (1e-5),
        max_position_embeddings (2048): informational; rotary positions are computed on the fly,
        position_encoding_2d (True): rotary over (position, block position), each on half a head,
        rope_theta (10000.0),
        bos_token_id (130004, `<sop>`), eos_token_id (130005, `<eop>`), pad_token_id (3),
        mask_token_id (130000, `[MASK]`), gmask_token_id (130001, `[gMASK]`),
        use_cache (True),
        tie_word_embeddings (True): THUDM's code ties `lm_head` to the word embeddings (transformers'
            default), so the tensor loaded last, `lm_head.weight`, serves both,
        alpha_num_layers (28): the residual scale is sqrt(2 * alpha_num_layers). THUDM's `GLMBlock`
            is never given the model depth and keeps its default of 28, so every ChatGLM-6B-architecture
            model, whatever its depth, uses sqrt(56); set it to `num_hidden_layers` for the paper's rule.
    """

    model_type = "chatglm6b"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "num_layers": "num_hidden_layers",
        "inner_hidden_size": "intermediate_size",
        "layernorm_epsilon": "layer_norm_eps",
        "max_sequence_length": "max_position_embeddings",
    }

    def __init__(
        self,
        vocab_size: int = 130528,
        hidden_size: int = 4096,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 32,
        intermediate_size: int | None = 16384,
        layer_norm_eps: float = 1e-5,
        max_position_embeddings: int = 2048,
        position_encoding_2d: bool = True,
        rope_theta: float = 10000.0,
        bos_token_id: int = 130004,
        eos_token_id: int = 130005,
        pad_token_id: int = 3,
        mask_token_id: int = 130000,
        gmask_token_id: int = 130001,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        alpha_num_layers: int = 28,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * hidden_size
        self.layer_norm_eps = layer_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.position_encoding_2d = position_encoding_2d
        self.rope_theta = rope_theta
        self.mask_token_id = mask_token_id
        self.gmask_token_id = gmask_token_id
        self.use_cache = use_cache
        self.initializer_range = initializer_range
        self.alpha_num_layers = alpha_num_layers
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
