"""Inference: `python -m xfed.infer` answers, scores a held-out file against the base model, and chats."""
import json

import pytest
from click.testing import CliRunner

from xfed.infer import main
from xfed.operators.horizontal_chatglm.adapter_state import save_adapter
from xfed.operators.horizontal_chatglm.config import Peft
from xfed.operators.horizontal_chatglm.inference import render_prompt
from xfed.operators.horizontal_chatglm.peft_setup import apply_peft


@pytest.fixture(scope="module")
def adapter(tiny_glm, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    peft_model = apply_peft(AutoModelForCausalLM.from_pretrained(str(tiny_glm)),
                            Peft.model_validate({"LORA": {"r": 2, "target_modules": ["q_proj", "v_proj"], "lora_alpha": 8,
                                                          "lora_dropout": 0.0}}))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)  # an adapter that changes the output
    return save_adapter(peft_model, tmp_path_factory.mktemp("adapter") / "final")


def test_render_prompt_follows_the_training_templates():
    assert render_prompt("abc", pattern="{}：\n问：{}\n答：", instruction="task") == "task：\n问：abc\n答："
    chat = render_prompt("again", history=[("hi", "ho")])
    assert chat.startswith("[Round 0]\n问：hi\n答：ho\n") and chat.endswith("问：again\n答：")


def test_prompt_answers_once(tiny_glm, adapter):
    res = CliRunner().invoke(main, ["--model", str(tiny_glm), "--adapter", str(adapter), "--prompt", "abc",
                                    "--max-new-tokens", "3"])
    assert res.exit_code == 0, res.output
    assert res.output.count("\n") == 1  # one answer line (a random tiny model may answer with nothing)


def test_eval_scores_base_and_adapter_on_a_qa_file(tiny_glm, adapter, tmp_path):
    qa = tmp_path / "heldout.json"
    qa.write_text(json.dumps({"instruction": "task", "instances": [{"input": "abc", "output": "cba"},
                                                                   {"input": "dog", "output": "god"}]}))
    res = CliRunner().invoke(main, ["--model", str(tiny_glm), "--adapter", str(adapter), "--eval", str(qa),
                                    "--baseline", "--json", "--max-new-tokens", "3"])
    assert res.exit_code == 0, res.output
    scores = json.loads(res.output.strip().splitlines()[-1])
    assert set(scores) == {"base", "adapter"} and scores["base"]["n"] == 2
    assert 0.0 <= scores["adapter"]["rouge_l"] <= 1.0


def test_chat_keeps_history_until_an_empty_line(tiny_glm, adapter):
    res = CliRunner().invoke(main, ["--model", str(tiny_glm), "--adapter", str(adapter), "--max-new-tokens", "2"],
                             input="hello\nagain\n\n")
    assert res.exit_code == 0, res.output
    assert res.output.count("model> ") == 2


def test_bad_adapter_folder_is_one_line_error(tiny_glm, tmp_path):
    res = CliRunner().invoke(main, ["--model", str(tiny_glm), "--adapter", str(tmp_path), "--prompt", "x"])
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
