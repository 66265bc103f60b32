"""`import xfed` stays light, yet makes saved ChatGLM-6B copies loadable through the Auto classes."""
import subprocess
import sys
import textwrap

SAVE = textwrap.dedent("""
    import sys, torch
    from xfed.models.chatglm import ChatGLM6BConfig, ChatGLM6BForCausalLM
    torch.manual_seed(0)
    cfg = ChatGLM6BConfig(vocab_size=150, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          bos_token_id=130, eos_token_id=131, pad_token_id=3, mask_token_id=128, gmask_token_id=129)
    ChatGLM6BForCausalLM(cfg).save_pretrained(sys.argv[1])
""")
LOAD = textwrap.dedent("""
    import sys
    import xfed  # registration must come from this import alone
    assert "torch" not in sys.modules and "transformers" not in sys.modules
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    print(type(model).__name__)
""")


def test_import_xfed_registers_chatglm6b_lazily(tmp_path):
    subprocess.run([sys.executable, "-c", SAVE, str(tmp_path)], check=True, timeout=120)
    out = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ChatGLM6BForCausalLM"
