"""ChatGLM-6B (GLM v1) as a native transformers family: config, model, tokenizer, THUDM import, adapters.

Importing this package registers model_type "chatglm6b" with AutoConfig, AutoModel,
AutoModelForCausalLM and AutoTokenizer, so a copy saved with `save_pretrained` reloads through the
Auto classes. THUDM folders (model_type "chatglm") are read by `from_thudm_folder`, never through
their `auto_map` / remote code.
"""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .adapters import after_peft_model, is_v1_model, load_v1_lora, load_v1_ptuning, v1_prefix_tuning_config
from .configuration_chatglm import ChatGLM6BConfig
from .layers import v1_position_ids
from .modeling_chatglm import ChatGLM6BForCausalLM, ChatGLM6BModel, ChatGLM6BPreTrainedModel
from .thudm import build_v1_example, config_from_thudm, from_thudm_folder, is_v1_config, load_v1_tokenizer
from .tokenization_chatglm import ChatGLM6BTokenizer

AutoConfig.register(ChatGLM6BConfig.model_type, ChatGLM6BConfig, exist_ok=True)
AutoModel.register(ChatGLM6BConfig, ChatGLM6BModel, exist_ok=True)
AutoModelForCausalLM.register(ChatGLM6BConfig, ChatGLM6BForCausalLM, exist_ok=True)
AutoTokenizer.register(ChatGLM6BConfig, slow_tokenizer_class=ChatGLM6BTokenizer, exist_ok=True)

__all__ = [
    "ChatGLM6BConfig",
    "ChatGLM6BForCausalLM",
    "ChatGLM6BModel",
    "ChatGLM6BPreTrainedModel",
    "ChatGLM6BTokenizer",
    "after_peft_model",
    "build_v1_example",
    "config_from_thudm",
    "from_thudm_folder",
    "is_v1_config",
    "is_v1_model",
    "load_v1_lora",
    "load_v1_ptuning",
    "load_v1_tokenizer",
    "v1_position_ids",
    "v1_prefix_tuning_config",
]
