"""ChatGLM3 replies end at the next role token (<|user|>, <|observation|>) as well as at eos, as THUDM's chat()."""
from __future__ import annotations

import pytest
import torch

from xfed.operators.horizontal_chatglm.inference import answer, prompt_ids
from xfed.operators.horizontal_chatglm.training import greedy_answers, stop_token_ids


def _force_after(model, token_id: int, calls: int):
    """Make `token_id` the greedy choice from the `calls`-th forward pass on (earlier passes untouched)."""
    seen = []

    def hook(_module, _inputs, output):
        seen.append(1)
        if len(seen) >= calls:
            output = output.clone()
            output[..., token_id] += 1e4
        return output

    return model.lm_head.register_forward_hook(hook), seen


def test_stop_ids_are_eos_and_the_role_tokens(v3_model):
    model, tok = v3_model
    assert stop_token_ids(tok, model)[:1] == [tok.eos_token_id]
    assert {tok.get_command("<|user|>"), tok.get_command("<|observation|>")} <= set(stop_token_ids(tok, model))
    assert tok.get_command("<|assistant|>") not in stop_token_ids(tok, model)


@pytest.mark.parametrize("role", ["<|user|>", "<|observation|>"])
def test_generation_stops_at_a_role_token_and_drops_it(v3_model, role):
    model, tok = v3_model
    model.eval()
    ids = prompt_ids(model, tok, "hello")
    free = greedy_answers(model, tok, [ids], max_new_tokens=2)[0]  # what the model says before the hand-over
    handle, seen = _force_after(model, tok.get_command(role), calls=3)  # prefill, 1 token, then the role token
    try:
        got = greedy_answers(model, tok, [ids], max_new_tokens=8)[0]
    finally:
        handle.remove()
    assert len(seen) == 3  # generation ended at the role token instead of running on for 8 tokens
    assert got == free and role not in got


def test_inference_prompts_use_chatglm3_role_tokens(v3_model):
    model, tok = v3_model
    ids = prompt_ids(model, tok, "text：\n问：hi\n答：", query="hi")
    assert ids[:3] == [tok.get_command("[gMASK]"), tok.get_command("sop"), tok.get_command("<|user|>")]
    assert ids[-1] == tok.get_command("<|assistant|>")
    chat = prompt_ids(model, tok, "ignored for chatglm3", query="again", history=[("hi", "ho")])
    assert chat.count(tok.get_command("<|user|>")) == 2 and chat.count(tok.get_command("<|assistant|>")) == 2
    with torch.no_grad():
        assert isinstance(answer(model, tok, "hi", max_new_tokens=2, query="hi"), str)
