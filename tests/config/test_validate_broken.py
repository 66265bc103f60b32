"""Broken config folders: `validate_command` exits 2 with one line per problem naming file, stage and key."""
from __future__ import annotations

import re

import pytest

from xfed.config.validate import validate_command

A = "trainer_config_assist_trainer.json"
N1 = "trainer_config_node-1.json"
TP = "train_info.train_params"


def _set(d: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for part in head:
        d = d.setdefault(part, {})
    d[last] = value


def _del(d: dict, dotted: str) -> None:
    *head, last = dotted.split(".")
    for part in head:
        d = d[part]
    del d[last]


def stage_edit(cs, node: str, dotted: str, value=None, *, delete: bool = False) -> None:
    def change(stages):
        (_del if delete else _set)(stages[0], dotted, *(() if delete else (value,)))
    cs.edit(f"trainer_config_{node}.json", change)


def params_edit(cs, node: str, dotted: str, value=None, *, delete: bool = False) -> None:
    stage_edit(cs, node, f"{TP}.{dotted}", value, delete=delete)


def fed_edit(cs, dotted: str, value=None, *, delete: bool = False) -> None:
    cs.edit("fed_conf.json", lambda fed: (_del if delete else _set)(fed, dotted, *(() if delete else (value,))))


# (id, change(cs), [regex per expected line]) — each case is one mistake a user makes.
CASES = [
    ("batch_size_zero",
     lambda cs: params_edit(cs, "node-1", "trainer.per_device_train_batch_size", 0),
     [rf"^{N1}: stage 0: {TP}\.trainer\.per_device_train_batch_size: must be >= 1, got 0$"]),
    ("epochs_negative",
     lambda cs: params_edit(cs, "assist_trainer", "trainer.num_train_epochs", -2),
     [rf"^{A}: stage 0: {TP}\.trainer\.num_train_epochs: must be > 0, got -2$"]),
    ("bad_json_fed_conf",
     lambda cs: cs.write_text("fed_conf.json", '{\n  "fed_info": {\n    "trainer" {"node-1": "x"}\n  }\n}\n'),
     [r"^fed_conf\.json: line 3 column 15: invalid JSON: Expecting ':' delimiter$"]),
    ("bad_json_trailing_comma",
     lambda cs: cs.write_text(N1, '[\n {"identity": "label_trainer",}\n]\n'),
     [r"^trainer_config_node-1\.json: line 2 column 31: invalid JSON: Expecting property name"]),
    ("json_nan",
     lambda cs: cs.write_text(N1, '[{"identity": NaN}]'),
     [r"^trainer_config_node-1\.json: invalid JSON: NaN is not valid JSON$"]),
    ("duplicate_json_key",
     lambda cs: cs.write_text("fed_conf.json", '{"fed_info": {"trainer": {"node-1": "a", "node-2": "b", '
                                               '"node-1": "c"}, "assist_trainer": {"assist_trainer": "d"}}}'),
     [r"^fed_conf\.json: fed_info\.trainer\.node-1: duplicate key"]),
    ("missing_fed_info",
     lambda cs: fed_edit(cs, "fed_info", delete=True),
     [r"^fed_conf\.json: fed_info: required key is missing$"]),
    ("missing_fed_conf_file",
     lambda cs: cs.path("fed_conf.json").unlink(),
     [r"^fed_conf\.json: file not found in "]),
    ("unknown_fed_conf_key",
     lambda cs: fed_edit(cs, "redis_sever", "localhost:6379"),
     [r"^fed_conf\.json: redis_sever: unknown key \(did you mean 'redis_server'\?\)$"]),
    ("bad_redis_port",
     lambda cs: fed_edit(cs, "redis_server", "localhost:notaport"),
     [r"^fed_conf\.json: redis_server: port 'notaport' is not a number"]),
    ("bad_redis_scheme",
     lambda cs: fed_edit(cs, "redis_server", "http://localhost:6379"),
     [r"^fed_conf\.json: redis_server: scheme 'http' is not redis://"]),
    ("wrong_type_heartbeat",
     lambda cs: fed_edit(cs, "heartbeat_interval", "2"),
     [r"^fed_conf\.json: heartbeat_interval: input should be a valid number, got '2'$"]),
    ("bad_identity_key",
     lambda cs: fed_edit(cs, "identities", {"node-1": "abc"}),
     [r"^fed_conf\.json: identities\.node-1: must be an Ed25519 public key as 64 hex digits$"]),
    ("duplicate_node_id",
     lambda cs: fed_edit(cs, "fed_info.assist_trainer", {"node-1": "localhost:1"}),
     [r"^fed_conf\.json: fed_info\.assist_trainer\.node-1: duplicate node id: 'node-1' is also a trainer$"]),
    ("two_trainers_no_assist",
     lambda cs: (fed_edit(cs, "fed_info.assist_trainer", delete=True), cs.path(A).unlink()),
     [r"^fed_conf\.json: fed_info\.assist_trainer: required with 2 trainers"]),
    ("missing_node_config",
     lambda cs: cs.path("trainer_config_node-2.json").unlink(),
     [r"^trainer_config_node-2\.json: not found: fed_conf\.json lists 'node-2' as a trainer$"]),
    ("node_file_not_in_fed_info",
     lambda cs: cs.write("trainer_config_node-9.json", cs.read(N1)),
     [r"^trainer_config_node-9\.json: node 'node-9' is not in fed_conf\.json fed_info"]),
    ("identity_mismatch",
     lambda cs: stage_edit(cs, "node-1", "identity", "assist_trainer"),
     [r"^trainer_config_node-1\.json: stage 0: identity: must be 'label_trainer': 'node-1' is a trainer"]),
    ("bad_identity_value",
     lambda cs: stage_edit(cs, "node-1", "identity", "trainer"),
     [r"^trainer_config_node-1\.json: stage 0: identity: input should be 'label_trainer' or 'assist_trainer'"]),
    ("missing_model_name",
     lambda cs: stage_edit(cs, "node-1", "model_info.name", delete=True),
     [r"^trainer_config_node-1\.json: stage 0: model_info\.name: required key is missing$"]),
    ("unknown_operator",
     lambda cs: stage_edit(cs, "node-1", "model_info.name", "horizontal_foo"),
     [r"^trainer_config_node-1\.json: stage 0: model_info\.name: unknown operator 'horizontal_foo' \(known: "]),
    ("stages_not_a_list",
     lambda cs: cs.write(N1, cs.read(N1)[0]),
     [r"^trainer_config_node-1\.json: must be a JSON list of stages, got dict$"]),
    ("no_stages",
     lambda cs: cs.write(N1, []),
     [r"^trainer_config_node-1\.json: has no stages"]),
    ("stage_count_differs",
     lambda cs: cs.write(N1, cs.read(N1) * 2),
     [r"^trainer_config_node-1\.json: has 2 stage\(s\) but trainer_config_assist_trainer\.json has 1"]),
    ("unknown_placeholder",
     lambda cs: stage_edit(cs, "node-1", "output.path", "../out/[RUN_ID]/[NODE_ID]"),
     [r"^trainer_config_node-1\.json: stage 0: output\.path: unknown placeholder \[RUN_ID\]"]),
    ("bad_dataset_type",
     lambda cs: stage_edit(cs, "node-1", "input.trainset", [{"type": "csv", "path": "x.csv"}]),
     [r"^trainer_config_node-1\.json: stage 0: input\.trainset\[0\]\.type: unknown dataset type 'csv'"]),
    ("label_trainer_without_trainset",
     lambda cs: stage_edit(cs, "node-1", "input.trainset", []),
     [r"^trainer_config_node-1\.json: stage 0: input\.trainset: a label trainer needs at least one dataset$"]),
    ("two_peft_keys",
     lambda cs: params_edit(cs, "assist_trainer", "peft.PREFIX_TUNING", {"pre_seq_len": 8}),
     [rf"^{A}: stage 0: {TP}\.peft: exactly one of LORA, PREFIX_TUNING is required"]),
    ("no_peft_on_assist",
     lambda cs: params_edit(cs, "assist_trainer", "peft", delete=True),
     [rf"^{A}: stage 0: {TP}\.peft: exactly one of LORA, PREFIX_TUNING is required$"]),
    ("wrong_type_lora_r",
     lambda cs: params_edit(cs, "assist_trainer", "peft.LORA.r", "8"),
     [rf"^{A}: stage 0: {TP}\.peft\.LORA\.r: input should be a valid integer, got '8'$"]),
    ("lora_key_typo",
     lambda cs: params_edit(cs, "assist_trainer", "peft.LORA.lora_alfa", 16),
     [rf"^{A}: stage 0: {TP}\.peft\.LORA\.lora_alfa: unknown key \(did you mean 'lora_alpha'\?\)$"]),
    ("unknown_trainer_arg",
     lambda cs: params_edit(cs, "node-1", "trainer.learning_rat", 0.1),
     [rf"^{N1}: stage 0: {TP}\.trainer\.learning_rat: not a transformers\.TrainingArguments field "
      r"\(did you mean 'learning_rate'\?\)$"]),
    ("trainer_arg_wrong_type",
     lambda cs: params_edit(cs, "node-1", "trainer.per_device_train_batch_size", 1.5),
     [rf"^{N1}: stage 0: {TP}\.trainer\.per_device_train_batch_size: expected int, got 1\.5$"]),
    ("trainer_arg_bad_choice",
     lambda cs: params_edit(cs, "assist_trainer", "trainer.save_strategy", "sometimes"),
     [rf"^{A}: stage 0: {TP}\.trainer\.save_strategy: must be one of no, steps, epoch, best, got 'sometimes'$"]),
    ("no_cuda_contradicts_use_cpu",
     lambda cs: params_edit(cs, "node-1", "trainer.no_cuda", False),
     [rf"^{N1}: stage 0: {TP}\.trainer\.no_cuda: XFL's no_cuda is use_cpu"]),
    ("agg_steps_zero", lambda cs: params_edit(cs, "assist_trainer", "aggregation.agg_steps", 0),
     [rf"^{A}: stage 0: {TP}\.aggregation\.agg_steps: must be a fraction 0 < f <= 1 .*, got 0$"]),
    ("agg_steps_negative", lambda cs: params_edit(cs, "assist_trainer", "aggregation.agg_steps", -1),
     [rf"^{A}: stage 0: {TP}\.aggregation\.agg_steps: must be a fraction .*, got -1$"]),
    ("agg_steps_1_5", lambda cs: params_edit(cs, "assist_trainer", "aggregation.agg_steps", 1.5),
     [rf"^{A}: stage 0: {TP}\.aggregation\.agg_steps: must be a fraction .*, got 1\.5$"]),
    ("agg_steps_string", lambda cs: params_edit(cs, "assist_trainer", "aggregation.agg_steps", "x"),
     [rf"^{A}: stage 0: {TP}\.aggregation\.agg_steps: must be a fraction .*, got 'x'$"]),
    ("agg_steps_missing", lambda cs: params_edit(cs, "assist_trainer", "aggregation.agg_steps", delete=True),
     [rf"^{A}: stage 0: {TP}\.aggregation\.agg_steps: required key is missing$"]),
    ("otp_key_bitlength", lambda cs: params_edit(cs, "assist_trainer", "encryption.otp.key_bitlength", 100),
     [rf"^{A}: stage 0: {TP}\.encryption\.otp\.key_bitlength: input should be 64 or 128, got 100$"]),
    ("dh_key_bitlength",
     lambda cs: params_edit(cs, "assist_trainer", "encryption.otp.key_exchange.key_bitlength", 1024),
     [rf"^{A}: stage 0: {TP}\.encryption\.otp\.key_exchange\.key_bitlength: input should be 2048, 3072, "]),
    ("csprng_method", lambda cs: params_edit(cs, "assist_trainer", "encryption.otp.csprng.method", "md5"),
     [rf"^{A}: stage 0: {TP}\.encryption\.otp\.csprng\.method: input should be 'sha1', .*got 'md5'$"]),
    ("csprng_name", lambda cs: params_edit(cs, "assist_trainer", "encryption.otp.csprng.name", "aes_drbg"),
     [rf"^{A}: stage 0: {TP}\.encryption\.otp\.csprng\.name: input should be 'hmac_drbg' or 'ctr_drbg'"]),
    ("otp_and_plain", lambda cs: params_edit(cs, "assist_trainer", "encryption.plain", {}),
     [rf"^{A}: stage 0: {TP}\.encryption: exactly one of otp, plain is required \(found otp and plain\)$"]),
    ("prompt_pattern_slots",
     lambda cs: params_edit(cs, "assist_trainer", "dataset.prompt_pattern", "{} {} {}"),
     [rf"^{A}: stage 0: {TP}\.dataset\.prompt_pattern: needs 1 or 2 {{}} slots, found 3"]),
    ("two_mistakes_two_lines",
     lambda cs: (params_edit(cs, "assist_trainer", "peft.LORA.bias", "some"),
                 params_edit(cs, "node-1", "trainer.seeed", 1)),
     [rf"^{A}: stage 0: {TP}\.peft\.LORA\.bias: input should be 'none', 'all' or 'lora_only', got 'some'$",
      rf"^{N1}: stage 0: {TP}\.trainer\.seeed: not a transformers\.TrainingArguments field "
      r"\(did you mean 'seed'\?\)$"]),
]


@pytest.mark.parametrize("change,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_config_exits_2_with_one_line_per_problem(config_set, capsys, change, expected):
    cs = config_set("2party_lora")
    change(cs)
    code = validate_command(cs.folder)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert len(lines) == len(expected), out
    for pattern in expected:
        assert any(re.search(pattern, line) for line in lines), f"{pattern!r} not in:\n{out}"
    assert re.search(r"^\d+ problem\(s\) in ", err, re.M)


def test_a_label_trainer_may_be_partial_but_a_lone_trainer_may_not(config_set, capsys):
    cs = config_set("2party_lora")
    assert validate_command(cs.folder) == 0  # node-1/node-2 carry only their own trainer keys
    capsys.readouterr()
    cs.edit("fed_conf.json", lambda fed: fed["fed_info"].update(trainer={"node-1": "x"}, assist_trainer={}))
    cs.path(A).unlink()
    cs.path("trainer_config_node-2.json").unlink()
    assert validate_command(cs.folder) == 2
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{N1}: stage 0: {TP}.peft: exactly one of LORA, PREFIX_TUNING is required",
        f"{N1}: stage 0: {TP}.aggregation.agg_steps: required key is missing",
    ]


def test_missing_paths_are_warnings_unless_strict(config_set, capsys):
    cs = config_set("2party_lora")
    stage_edit(cs, "node-1", "input.pretrained_model.path", "../no-such-model")
    assert validate_command(cs.folder) == 0
    err = capsys.readouterr().err
    assert re.search(r"^warning: trainer_config_node-1\.json: stage 0: input\.pretrained_model\.path: "
                     r".*/no-such-model: not found on this machine$", err, re.M)
    assert validate_command(cs.folder, strict=True) == 2
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and "input.pretrained_model.path" in out


def test_a_missing_config_folder_is_one_line(tmp_path, capsys):
    assert validate_command(tmp_path / "nowhere") == 2
    out = capsys.readouterr().out
    assert out.splitlines() == [f"{tmp_path / 'nowhere'}: config folder not found (set --config_path or "
                                "XFED_CONFIG_PATH)"]


def test_label_trainer_settings_the_assist_overrides_are_noted(config_set, capsys):
    cs = config_set("2party_lora")
    params_edit(cs, "node-1", "trainer.learning_rate", 0.5)
    assert validate_command(cs.folder) == 0
    err = capsys.readouterr().err
    assert (f"note: {N1}: stage 0: {TP}.trainer.learning_rate: assist=0.003 party=0.5; "
            "the assist trainer's value is used") in err


def _mean_folder(tmp_path, assist_params: dict):
    import json

    folder = tmp_path / "mean"
    folder.mkdir(parents=True)
    fed = {"fed_info": {"trainer": {"node-1": None, "node-2": None}, "assist_trainer": {"assist": None}}}
    (folder / "fed_conf.json").write_text(json.dumps(fed), encoding="utf-8")
    for node, identity, params in (("node-1", "label_trainer", {}), ("node-2", "label_trainer", {}),
                                   ("assist", "assist_trainer", assist_params)):
        stage = {"identity": identity, "model_info": {"name": "horizontal_mean"},
                 "output": {"path": "out/[JOB_ID]/[NODE_ID]"}, "train_info": {"train_params": params}}
        (folder / f"trainer_config_{node}.json").write_text(json.dumps([stage]), encoding="utf-8")
    return folder


def test_validation_dispatches_train_params_to_the_operator_named(tmp_path, capsys):
    from xfed.operators import registry

    try:
        registry.params_model("horizontal_mean")
    except ImportError:
        pytest.skip("xfed/operators/horizontal_mean/config.py is not there yet")
    assert validate_command(_mean_folder(tmp_path, {"rounds": 2, "encryption": {"plain": {}}})) == 0
    assert "stage 0: horizontal_mean plain" in capsys.readouterr().out
    assert validate_command(_mean_folder(tmp_path / "x", {"rounds": 0, "peft": {}})) == 2
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("trainer_config_assist.json: stage 0: train_info.train_params.rounds: ")
    assert lines[1].startswith("trainer_config_assist.json: stage 0: train_info.train_params.peft: ")


@pytest.mark.parametrize("server,loud", [("10.1.2.3:6379", True), ("redis://broker.example.org:6379/0", True),
                                         ("127.0.0.1:6379", False), ("localhost:6379", False), ("embedded", False)])
def test_a_remote_broker_without_identities_gets_a_loud_warning(config_set, capsys, server, loud):
    cs = config_set("2party_lora")
    fed_edit(cs, "redis_server", server)
    assert validate_command(cs.folder) == 0
    err = capsys.readouterr().err
    assert ("the broker is not on this machine" in err and "can forge events" in err
            and "xfed.py keygen NODE" in err) is loud, err
