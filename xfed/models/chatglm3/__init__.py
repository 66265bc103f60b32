"""ChatGLM2-6B / ChatGLM3-6B: THUDM folders mapped exactly onto transformers' GlmForCausalLM."""
from xfed.models.chatglm3.config import glm_config_from_thudm
from xfed.models.chatglm3.loader import load_thudm_v2, load_tokenizer
from xfed.models.chatglm3.semantics import install_thudm_semantics, set_prefix_length
from xfed.models.chatglm3.tokenization import ChatGLM3Tokenizer

__all__ = ["ChatGLM3Tokenizer", "glm_config_from_thudm", "install_thudm_semantics", "load_thudm_v2",
           "load_tokenizer", "set_prefix_length"]
