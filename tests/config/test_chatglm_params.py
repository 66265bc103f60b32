"""horizontal_chatglm Params: what the operator reads, partial label-trainer configs, the merge."""
from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from xfed.operators.horizontal_chatglm.config import Params, validated_params
from xfed.operators.horizontal_chatglm.merge import merge_authoritative
from xfed.operators.horizontal_chatglm.training_args import FieldSpec, check_value, training_argument_specs

FULL = {
    "aggregation": {"agg_steps": 0.2},
    "encryption": {"otp": {"key_bitlength": 128, "data_type": "torch.Tensor",
                           "key_exchange": {"key_bitlength": 2048, "optimized": True},
                           "csprng": {"name": "hmac_drbg", "method": "sha256"}}},
    "peft": {"LORA": {"task_type": "CAUSAL_LM", "r": 4, "target_modules": ["query_key_value"], "lora_alpha": 32,
                      "lora_dropout": 0.1, "fan_in_fan_out": False, "bias": "none", "modules_to_save": None}},
    "trainer": {"per_device_train_batch_size": 2, "learning_rate": 1e-3, "no_cuda": True, "save_strategy": "steps"},
    "dataset": {"max_src_length": 64, "prompt_pattern": "{}：\n问：{}\n答："},
}


def test_complete_params_give_the_operator_ready_kwargs():
    p = Params.model_validate(FULL)
    assert p.trainer_kwargs() == {"per_device_train_batch_size": 2, "learning_rate": 1e-3, "use_cpu": True,
                                  "save_strategy": "steps"}
    assert p.peft_kind == "LORA"
    kw = p.peft_kwargs()
    assert kw["r"] == 4 and kw["target_modules"] == ["query_key_value"] and kw["task_type"] == "CAUSAL_LM"
    assert p.encryption_dict() == {"otp": {"key_bitlength": 128, "data_type": "torch.Tensor",
                                           "key_exchange": {"key_bitlength": 2048, "optimized": True},
                                           "csprng": {"name": "hmac_drbg", "method": "sha256"}}}
    assert p.dataset.max_src_length == 64 and p.dataset.max_dst_length == 100
    assert p.aggregation.is_fraction and p.aggregation.weighting == "num_examples"


def test_defaults_fill_in_everything_but_peft_and_agg_steps():
    p = Params.model_validate({"peft": {"PREFIX_TUNING": {"num_virtual_tokens": 12, "prefix_projection": True}},
                               "aggregation": {"agg_steps": 5}})
    assert p.peft_kwargs() == {"task_type": "CAUSAL_LM", "num_virtual_tokens": 12, "prefix_projection": True}
    assert p.encryption.method == "otp" and p.encryption.otp.key_exchange.key_bitlength == 3072
    assert p.trainer == {} and p.dataset.key_query == "input"
    assert p.aggregation.agg_steps == 5 and not p.aggregation.is_fraction


def test_partial_params_validate_only_what_is_there():
    p = Params.model_validate({"trainer": {"no_cuda": True}}, context={"complete": False})
    assert p.peft is None and p.trainer_kwargs() == {"use_cpu": True}
    with pytest.raises(ValidationError, match="exactly one of LORA, PREFIX_TUNING"):
        Params.model_validate({"trainer": {"no_cuda": True}})
    with pytest.raises(ValidationError, match="(?i)input should be 64 or 128"):
        Params.model_validate({"encryption": {"otp": {"key_bitlength": 32}}}, context={"complete": False})


@pytest.mark.parametrize("value,ok", [(0.2, True), (1, True), (1.0, True), (7, True), (3.0, True), (0, False),
                                      (-1, False), (1.5, False), ("x", False), (True, False), (0.0, False)])
def test_agg_steps_is_a_fraction_or_a_step_interval(value, ok):
    data = {"peft": {"LORA": {}}, "aggregation": {"agg_steps": value}}
    if ok:
        assert Params.model_validate(data).aggregation.agg_steps == value
    else:
        with pytest.raises(ValidationError, match="agg_steps"):
            Params.model_validate(data)


def test_merge_authoritative_keeps_local_keys_and_lists_conflicts():
    party = {"trainer": {"per_device_train_batch_size": 1, "no_cuda": False, "learning_rate": 0.5},
             "peft": {"LORA": {"r": 16}}, "dataset": {"key_query": "q", "max_src_length": 10}}
    assist = validated_params(FULL, "assist_trainer")
    merged, conflicts = merge_authoritative(assist, validated_params(party, "node-1", complete=False))
    assert merged.trainer["per_device_train_batch_size"] == 1 and merged.trainer["use_cpu"] is False
    assert merged.trainer["learning_rate"] == 1e-3 and merged.peft == assist.peft
    assert merged.data.key_query == "q" and merged.data.max_src_length == 64
    assert conflicts == ["peft.LORA.r: assist=4 party=16", "trainer.learning_rate: assist=0.001 party=0.5",
                         "dataset.max_src_length: assist=64 party=10"]
    # what the label trainer receives and validates: the same model
    sent = validated_params(merged.model_dump(mode="json", exclude_unset=True), "node-1")
    assert sent == merged and sent.trainer_kwargs()["use_cpu"] is False
    alone, none = merge_authoritative(assist, validated_params({}, "node-1", complete=False))
    assert none == [] and alone.peft == assist.peft and alone.trainer["use_cpu"] is True


def test_trainer_fields_read_from_source_match_the_real_training_arguments():
    from transformers import TrainingArguments  # the one place a test pays for the real import

    real = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    specs = training_argument_specs()
    assert set(specs) == real
    assert specs["save_strategy"].choices == ("no", "steps", "epoch", "best")
    assert check_value(specs["learning_rate"], 1) is None and check_value(specs["learning_rate"], "1e-3")
    assert check_value(specs["report_to"], ["none"]) is None and check_value(specs["report_to"], None) is None
    assert check_value(specs["lr_scheduler_type"], "cosine") is None
    assert "must be one of" in check_value(specs["lr_scheduler_type"], "cosinus")
    assert check_value(FieldSpec(frozenset({"bool"})), 1) == "expected bool, got 1"


def test_a_wrong_type_for_a_union_field_is_one_problem_line():
    from xfed.config.problems import from_validation_error

    with pytest.raises(ValidationError) as info:
        Params.model_validate({"peft": {"LORA": {"exclude_modules": 5, "r": "q"}}, "aggregation": {"agg_steps": 1}})
    lines = [str(p) for p in from_validation_error(info.value, "f.json", stage=0, prefix="tp")]
    assert lines == ["f.json: stage 0: tp.peft.LORA.r: input should be a valid integer, got 'q'",
                     "f.json: stage 0: tp.peft.LORA.exclude_modules: input should be a valid list or a valid "
                     "string, got 5"]


def test_trainer_args_the_operator_sets_itself_are_noted_not_refused(config_set, capsys):
    from xfed.config.validate import validate_command

    cs = config_set("2party_lora")
    cs.params("node-1")(lambda tp: tp["trainer"].update(save_strategy="steps", report_to="none"))
    assert validate_command(cs.folder) == 0
    err = capsys.readouterr().err
    assert ("note: trainer_config_node-1.json: stage 0: train_info.train_params.trainer.save_strategy: "
            "ignored: xfed sets 'no'") in err
    assert "trainer.report_to" not in err  # the value xfed uses anyway
