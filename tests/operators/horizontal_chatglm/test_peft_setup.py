"""peft set-up: LoRA with explicit or "auto" targets, P-tuning v2 as PREFIX_TUNING, clear errors."""
import pytest

from xfed.errors import ConfigError, ModelError
from xfed.operators.horizontal_chatglm.peft_setup import apply_peft, build_peft_config, peft_kind


def _model(tiny_glm):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_glm))


def test_auto_targets_the_attention_projections(tiny_glm):
    config = build_peft_config(_model(tiny_glm), {"LORA": {"r": 4, "target_modules": "auto"}})
    assert sorted(config.target_modules) == ["k_proj", "q_proj", "v_proj"]


def test_xfl_query_key_value_maps_onto_split_projections(tiny_glm):
    config = build_peft_config(_model(tiny_glm), {"LORA": {"r": 4, "target_modules": ["query_key_value"]}})
    assert sorted(config.target_modules) == ["k_proj", "q_proj", "v_proj"]


def test_unknown_target_module_lists_the_linear_modules_the_model_has(tiny_glm):
    with pytest.raises(ModelError, match=r"c_fc.*q_proj"):
        build_peft_config(_model(tiny_glm), {"LORA": {"r": 4, "target_modules": ["c_fc"]}})


def test_exactly_one_peft_kind():
    with pytest.raises(ConfigError, match="exactly one of LORA, PREFIX_TUNING"):
        peft_kind({"LORA": {}, "PREFIX_TUNING": {}})
    with pytest.raises(ConfigError, match="exactly one"):
        peft_kind({})


def test_xfl_lora_keys_are_accepted(tiny_glm):
    section = {"task_type": "CAUSAL_LM", "r": 8, "target_modules": ["q_proj", "v_proj"], "lora_alpha": 32,
               "lora_dropout": 0.1, "fan_in_fan_out": False, "bias": "none", "modules_to_save": None}
    peft_model = apply_peft(_model(tiny_glm), {"LORA": section})
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("projection", [False, True])
def test_pre_seq_len_becomes_virtual_tokens(tiny_glm, projection):
    peft_model = apply_peft(_model(tiny_glm), {"PREFIX_TUNING": {"task_type": "CAUSAL_LM", "pre_seq_len": 6,
                                                                 "prefix_projection": projection}})
    config = peft_model.peft_config["default"]
    assert config.num_virtual_tokens == 6 and config.prefix_projection is projection
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("transform" in n for n in trainable) is projection


def test_bad_pre_seq_len_is_a_config_error(tiny_glm):
    with pytest.raises(ConfigError, match="pre_seq_len"):
        build_peft_config(_model(tiny_glm), {"PREFIX_TUNING": {"pre_seq_len": 0}})
