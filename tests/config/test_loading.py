"""load_fed_conf / load_stages / fill_placeholders: resolved paths, one-line ConfigErrors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from xfed.config import fill_placeholders, load_fed_conf, load_stages, resolve_path
from xfed.config.jsonfile import read_json
from xfed.errors import ConfigError


def test_relative_paths_resolve_against_the_config_file_and_keep_placeholders(config_set, monkeypatch, tmp_path):
    cs = config_set("2party_lora")
    monkeypatch.chdir("/")  # the working directory must not matter
    stages = load_stages(cs.folder, "node-1")
    assert len(stages) == 1
    stage = stages[0]
    assert stage.identity == "label_trainer" and stage.model_info.name == "horizontal_chatglm"
    assert stage.input.pretrained_model.path == str(tmp_path / "work" / "tiny-glm")
    assert stage.input.trainset[0].path == str(tmp_path / "work" / "demo_data" / "[NODE_ID].json")
    assert stage.input.trainset[0].type == "QA"
    assert stage.output.path == str(tmp_path / "work" / "output" / "2party_lora" / "[JOB_ID]" / "[NODE_ID]")
    assert isinstance(stage.train_info.train_params, dict)
    out = fill_placeholders(stage.output.path, job_id="job-7", node_id="node-1", stage_id=0)
    assert out == str(tmp_path / "work" / "output" / "2party_lora" / "job-7" / "node-1")
    # at run time every path of the stage is filled, inputs too (each node reads its own shard)
    filled = stage.filled(job_id="7", node_id="node-2", stage_id=0)
    assert filled.input.trainset[0].path == str(tmp_path / "work" / "demo_data" / "node-2.json")
    assert filled.input.valset[0].path == str(tmp_path / "work" / "demo_data" / "node-2_val.json")
    assert filled.output.path == str(tmp_path / "work" / "output" / "2party_lora" / "7" / "node-2")


def test_validate_names_an_input_path_missing_for_one_node(config_set, capsys):
    from xfed.config.validate import validate_command

    cs = config_set("3party_lora")
    (cs.folder.parent.parent / "work" / "demo_data" / "node-2.json").unlink()
    assert validate_command(cs.folder) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "trainer_config_node-2.json" in err and "demo_data/node-2.json" in err, err
    assert validate_command(cs.folder, strict=True) == 2


def test_load_fed_conf_resolves_its_files_and_remembers_its_folder(config_set):
    cs = config_set("2party_lora")
    cs.edit("fed_conf.json", lambda fed: (fed.update(redis_server="rediss://h:6380"),
                                          fed["redis"].update(tls_ca_file="certs/ca.pem")))
    fed = load_fed_conf(cs.folder)
    assert fed.redis.tls_ca_file == str(cs.folder.resolve() / "certs" / "ca.pem")
    assert fed.config_dir == cs.folder.resolve()
    assert fed.redis.namespace == "xfed_2party_lora"


def test_loaders_raise_one_line_config_errors(config_set, tmp_path):
    cs = config_set("2party_lora")
    cs.edit("trainer_config_node-1.json", lambda st: st[0].pop("output"))
    cs.edit("trainer_config_node-2.json", lambda st: st[0].update(identity=1, output={"path": ""}))
    with pytest.raises(ConfigError) as info:
        load_stages(cs.folder, "node-1")
    assert str(info.value) == "trainer_config_node-1.json: stage 0: output: required key is missing"
    with pytest.raises(ConfigError, match=r"^trainer_config_node-2\.json: stage 0: identity: .*\(and 1 more "):
        load_stages(cs.folder, "node-2")
    with pytest.raises(ConfigError, match="trainer_config_node-5.json: file not found"):
        load_stages(cs.folder, "node-5")
    with pytest.raises(ConfigError, match="config folder not found"):
        load_fed_conf(tmp_path / "missing")


@pytest.mark.parametrize("path,kwargs,message", [
    ("/o/[RUN]/x", {}, r"unknown placeholder \[RUN\]"),
    ("/o/[JOB_ID]", {}, r"\[JOB_ID\] used but no job id given"),
    ("/o/[JOB_ID]", {"job_id": "../etc"}, "not a safe path component"),
    ("/o/[NODE_ID]", {"node_id": "a/b"}, "not a safe path component"),
])
def test_fill_placeholders_refuses_what_it_cannot_fill_safely(path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        fill_placeholders(path, **kwargs)


def test_fill_placeholders_leaves_other_brackets_alone():
    assert fill_placeholders("/d/data[1]/[STAGE_ID]/run[a]", stage_id=2) == "/d/data[1]/2/run[a]"
    assert resolve_path("~/x", "/base") == str(Path("~/x").expanduser())
    assert resolve_path("/abs/./y", "/base") == "/abs/y"


def test_read_json_reports_duplicates_per_stage_and_bad_bytes(tmp_path):
    f = tmp_path / "t.json"
    f.write_text('[{"a": 1}, {"model_info": {"name": "x", "name": "y"}}]', encoding="utf-8")
    value, problems = read_json(f, stages=True)
    assert value[1]["model_info"]["name"] == "y"
    assert [str(p) for p in problems] == [
        "t.json: stage 1: model_info.name: duplicate key (JSON would silently keep only the last value)"]
    f.write_bytes(b'{"a": "\xff"}')
    assert [str(p) for p in read_json(f)[1]] == ["t.json: not UTF-8 text (byte offset 7)"]
    f.write_text("\ufeff" + json.dumps({"ok": True}), encoding="utf-8")
    assert read_json(f) == ({"ok": True}, [])
