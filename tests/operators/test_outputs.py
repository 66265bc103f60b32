"""Output folders bound to their job (xfed_job.json): never written over by another job."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from xfed.errors import ConfigError
from xfed.operators.outputs import MARKER, claim_output_dir


def ctx(job: str = "1", uid: str = "u1", node: str = "node-1"):
    return SimpleNamespace(job_id=job, job_uid=uid, node_id=node,
                           fed=SimpleNamespace(redis=SimpleNamespace(namespace="demo")))


def test_a_new_folder_is_claimed_and_the_same_job_may_come_back(tmp_path):
    folder = tmp_path / "out" / "1" / "node-1"
    assert claim_output_dir(folder, ctx()) == folder
    assert json.loads((folder / MARKER).read_text()) == {"job": "1", "uid": "u1", "namespace": "demo",
                                                        "node": "node-1"}
    (folder / "metrics.json").write_text("{}")
    claim_output_dir(folder, ctx())  # a resumed attempt of the same job
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_output_dir(empty, ctx())  # an existing empty folder is fine


def test_another_jobs_folder_is_refused_naming_its_owner(tmp_path):
    folder = tmp_path / "out" / "1" / "node-1"
    claim_output_dir(folder, ctx(uid="old"))
    (folder / "metrics.json").write_text('{"old": true}')
    with pytest.raises(ConfigError, match=r"^node-1: output folder .* holds the files of job 1 \(uid old, "
                                          r"namespace 'demo'\), not of this job 1 \(uid new, namespace 'demo'\)"):
        claim_output_dir(folder, ctx(uid="new"))
    assert (folder / "metrics.json").read_text() == '{"old": true}'
    assert json.loads((folder / MARKER).read_text())["uid"] == "old"


def test_files_without_a_marker_are_refused_and_a_file_is_not_a_folder(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "final").mkdir()
    with pytest.raises(ConfigError, match="already holds files that are no xfed job's"):
        claim_output_dir(folder, ctx())
    assert not (folder / MARKER).exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        claim_output_dir(tmp_path / "f", ctx())
