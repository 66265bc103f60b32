"""`xfed import-primihub`: the PrimiHub guide's ChatGlm.json mapped key by key, what is not mapped listed, and
bad input refused in one line with nothing written. (The imported folder runs a job in
tests/integration/test_reporting_job.py.)"""
from __future__ import annotations

import json

import pytest

from xfed.config.validate import validate_folder
from xfed.errors import ConfigError
from xfed.importers.primihub import convert, import_primihub


def guide() -> dict:
    """The example of PrimiHub's ChatGLM guide (example/FL/chatglm/ChatGlm.json), as published."""
    return {
        "party_info": {"Alice": {"ip": "172.21.1.58", "port": 50050, "use_tls": False},
                       "Bob": {"ip": "172.21.1.63", "port": 50051, "use_tls": False},
                       "Charlie": {"ip": "172.21.1.58", "port": 50052, "use_tls": False},
                       "task_manager": "127.0.0.1:50050"},
        "component_params": {
            "roles": {"server": "Charlie", "client": ["Alice", "Bob"]},
            "common_params": {"model": "Chat_glm", "process": "train", "aggration_iter": 2, "train_iter": 3},
            "role_params": {
                "Alice": {"path": "~/czl/ChatGLM-6B-Med/ptuning", "train_file": "Meddata/train.json",
                          "validation_file": "Meddata/train.json", "prompt_column": "prompt",
                          "response_column": "response", "history_column": "history",
                          "model_name_or_path": "~/czl/chatglm-6b-int4", "output_dir": "output/Alice_result",
                          "num_examples": 10},
                "Bob": {"path": "~/czl/ChatGLM-6B/ptuning", "train_file": "AdvertiseGen/train.json",
                        "validation_file": "AdvertiseGen/dev.json", "prompt_column": "content",
                        "response_column": "summary", "model_name_or_path": "~/czl/chatglm-6b-int4",
                        "output_dir": "output/Bob_result", "num_examples": 10},
            },
        },
    }


def test_the_guides_example_maps_roles_rounds_columns_and_prefix_tuning():
    fed, stages, notes = convert(guide())
    assert fed["fed_info"]["trainer"] == {"Alice": "172.21.1.58:50050", "Bob": "172.21.1.63:50051"}
    assert list(fed["fed_info"]["assist_trainer"]) == ["Charlie"]
    charlie = stages["Charlie"][0]
    assert charlie["identity"] == "assist_trainer" and "trainset" not in charlie["input"]
    tp = charlie["train_info"]["train_params"]
    assert tp["aggregation"]["agg_steps"] == 3 and tp["trainer"]["max_steps"] == 6  # 2 rounds of 3 steps
    assert tp["peft"] == {"PREFIX_TUNING": {"task_type": "CAUSAL_LM", "pre_seq_len": 128, "prefix_projection": False}}
    assert tp["trainer"]["learning_rate"] == 2e-2 and tp["trainer"]["per_device_train_batch_size"] == 1
    assert tp["dataset"]["max_src_length"] == 64 and "bleu-4" in tp["dataset"]["metrics"]
    alice, bob = stages["Alice"][0], stages["Bob"][0]
    assert alice["model_info"]["config"] == {"quantization_bit": 4}
    assert alice["train_info"]["train_params"]["dataset"] == {"prompt_column": "prompt", "response_column": "response",
                                                               "history_column": "history"}
    assert bob["train_info"]["train_params"]["dataset"] == {"prompt_column": "content", "response_column": "summary"}
    assert alice["input"]["trainset"][0]["path"] == "~/czl/ChatGLM-6B-Med/ptuning/Meddata/train.json"
    assert bob["input"]["valset"][0]["path"] == "~/czl/ChatGLM-6B/ptuning/AdvertiseGen/dev.json"
    assert bob["output"]["path"] == "~/czl/ChatGLM-6B/ptuning/output/Bob_result/[JOB_ID]"
    assert all("\n" not in n for n in notes)
    for topic in ("party_info", "Alice.num_examples", "Bob.path", "train_iter + 1", "roles.server Charlie"):
        assert sum(topic in n for n in notes) == 1, topic


def test_role_params_override_primihubs_fixed_settings():
    doc = guide()
    for party in ("Alice", "Bob"):
        doc["component_params"]["role_params"][party].update(pre_seq_len=16, quantization_bit=8)
    _, stages, _ = convert(doc)
    assert stages["Charlie"][0]["train_info"]["train_params"]["peft"]["PREFIX_TUNING"]["pre_seq_len"] == 16
    assert stages["Bob"][0]["model_info"]["config"] == {"quantization_bit": 8}
    doc["component_params"]["role_params"]["Bob"]["pre_seq_len"] = 32
    assert any("pre_seq_len: parties differ" in n for n in convert(doc)[2])


def test_written_folder_validates_and_is_never_overwritten(tmp_path):
    src = tmp_path / "ChatGlm.json"
    src.write_text(json.dumps(guide()))
    written, _ = import_primihub(src, tmp_path / "cfg")
    assert sorted(p.name for p in written) == ["fed_conf.json", "trainer_config_Alice.json",
                                               "trainer_config_Bob.json", "trainer_config_Charlie.json"]
    report = validate_folder(tmp_path / "cfg")
    assert report.errors == [], report.errors
    before = (tmp_path / "cfg" / "fed_conf.json").read_text()
    with pytest.raises(ConfigError, match="fed_conf.json: exists already; nothing written"):
        import_primihub(src, tmp_path / "cfg")
    assert (tmp_path / "cfg" / "fed_conf.json").read_text() == before


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["component_params"]["common_params"].pop("aggration_iter"),
     "common_params.aggration_iter: required key is missing"),
    (lambda d: d["component_params"]["common_params"].update(train_iter="3"),
     "common_params.train_iter: expected int, got str"),
    (lambda d: d["component_params"]["roles"].update(server="Char lie"), "cannot be an xfed node id"),
    (lambda d: d["component_params"]["role_params"]["Bob"].pop("prompt_column"),
     "role_params.Bob.prompt_column: required key is missing"),
    (lambda d: d["component_params"]["common_params"].update(process="predict"), "'predict' has no xfed equivalent"),
])
def test_bad_job_files_are_one_line_errors(tmp_path, mutate, message):
    doc = guide()
    mutate(doc)
    src = tmp_path / "ChatGlm.json"
    src.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        import_primihub(src, tmp_path / "cfg")
    assert "\n" not in str(err.value) and not (tmp_path / "cfg").exists()
    src.write_text("{ not json")
    with pytest.raises(ConfigError, match="ChatGlm.json: line 1 column 3: invalid JSON"):
        import_primihub(src, tmp_path / "cfg")
