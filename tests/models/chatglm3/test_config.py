"""ChatGLM2/3 config.json -> GlmConfig: THUDM's published configs, rope_ratio, refused variants."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from xfed.errors import ModelError
from xfed.models.chatglm3.config import glm_config_from_thudm

BASE = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures" / "chatglm" / "base"


def thudm_config(name: str) -> dict:
    return json.loads((BASE / name / "config.json").read_text(encoding="utf-8"))


def test_chatglm3_6b_maps_to_glm_sizes():
    config = glm_config_from_thudm(thudm_config("chatglm3-6b"), source="c", family="chatglm3")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (4096, 28, 32)
    assert (config.num_key_value_heads, config.head_dim, config.intermediate_size) == (2, 128, 13696)
    assert config.vocab_size == 65024 and config.attention_bias is True
    assert config.rope_parameters["rope_theta"] == 10000.0
    assert config.rope_parameters["partial_rotary_factor"] == 0.5
    assert config.pad_token_id == 0 and config.eos_token_id == 2
    assert config.xfed_source_family == "chatglm3"


def test_rope_ratio_scales_rope_theta():
    cfg = thudm_config("chatglm3-6b-32k")
    cfg["quantization_bit"] = 0
    config = glm_config_from_thudm(cfg, source="c", family="chatglm3")
    assert config.rope_parameters["rope_theta"] == 10000.0 * 50
    assert config.max_position_embeddings == 32768


def test_int4_config_maps_and_an_unsupported_bit_width_is_refused_naming_the_key():
    cfg = thudm_config("chatglm3-6b-32k")  # THUDM's published config says quantization_bit 4
    assert glm_config_from_thudm(cfg, source="x/config.json", family="chatglm3").num_hidden_layers == 28
    for bits in (2, 3, 16, "4"):
        cfg["quantization_bit"] = bits
        with pytest.raises(ModelError, match=r"x/config.json: key 'quantization_bit'.*not supported \(THUDM"):
            glm_config_from_thudm(cfg, source="x/config.json", family="chatglm3")


@pytest.mark.parametrize("key,value", [("rmsnorm", False), ("add_bias_linear", True),
                                       ("apply_residual_connection_post_layernorm", True)])
def test_variants_glm_cannot_express_are_refused(key, value):
    cfg = thudm_config("chatglm3-6b") | {key: value}
    with pytest.raises(ModelError, match=f"x/config.json: key '{key}'"):
        glm_config_from_thudm(cfg, source="x/config.json", family="chatglm3")


def test_missing_size_key_is_named():
    cfg = thudm_config("chatglm3-6b")
    del cfg["kv_channels"]
    with pytest.raises(ModelError, match="'kv_channels' missing"):
        glm_config_from_thudm(cfg, source="x/config.json", family="chatglm3")
