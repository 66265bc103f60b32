"""Ids and outputs bound to a job, not a counter: a Redis that forgot its data hands out job 1 again,
and the new job 1 must neither write over nor resume from the old job 1's files (issue 13, item 1)."""
from __future__ import annotations

import json

import pytest

from tests.integration.conftest import serve

pytestmark = pytest.mark.integration


def test_a_new_job_with_a_reused_id_neither_overwrites_nor_resumes_the_old_ones_files(tmp_path):
    with serve(tmp_path) as fed:
        fed.write_config({"rounds": 2, "dim": 8})
        fed.start_all()
        first = fed.client("-c", "start", "--follow")
        assert first.returncode == 0 and "job 1 SUCCESSFUL" in first.stdout, first.stdout + fed.logs()
        out = fed.root / "out" / "1"
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        old_uid = json.loads((out / "node-1" / "xfed_job.json").read_text())["uid"]
        assert old_uid == fed.store().uid("1") and len(old_uid) == 16

        fed.stop_all()  # everything stops, and Redis comes back without its data
        fed.redis_client().flushall()
        fed.start_all()
        second = fed.client("-c", "start", "--follow")
        assert second.returncode == 1, second.stdout + fed.logs()
        line = next(x for x in second.stdout.splitlines() if x.startswith("job 1 FAILED"))
        assert f"holds the files of job 1 (uid {old_uid}, namespace 'itest'), not of this job 1 (uid " in line
        new_uid = fed.store().uid("1")
        assert new_uid != old_uid and new_uid in line

        resumed = fed.client("-c", "start", "--resume", "1", "--follow")
        assert resumed.returncode == 1 and f"(uid {old_uid}" in resumed.stdout, resumed.stdout + fed.logs()
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # not one byte changed
