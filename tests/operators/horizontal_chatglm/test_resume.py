"""resume.py's pure logic: which round is complete, which round the parties agree on, what is restored."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from xfed.errors import JobError
from xfed.operators.horizontal_chatglm import resume


class Ctx(SimpleNamespace):
    def __init__(self, attempt: int = 1, node_id: str = "assist_trainer"):
        super().__init__(attempt=attempt, node_id=node_id, events=[], job_id="1", job_uid="", fed=None)

    def report(self, kind, data):
        self.events.append((kind, data))


def _save(out, k, rounds=4, value=0.0):
    return resume.save_round_state(out, k, rounds, {"w": np.full((2, 3), value, np.float32)}, None,
                                   node="n", attempt=0)


def test_last_complete_round_is_the_newest_round_with_its_state_file(tmp_path):
    assert resume.last_complete_round(tmp_path) == 0
    for k in (1, 2, 3):
        _save(tmp_path, k)
    (tmp_path / "checkpoint-3" / resume.RESUME_DIR / resume.STATE_FILE).unlink()  # killed while saving round 3
    assert resume.last_complete_round(tmp_path) == 2
    (tmp_path / "checkpoint-2" / resume.RESUME_DIR / resume.STATE_FILE).write_text("{not json")
    assert resume.last_complete_round(tmp_path) == 1
    (tmp_path / "checkpoint-9").mkdir()  # an adapter without resume state
    assert resume.last_complete_round(tmp_path) == 1


def _adapter(out, k):
    (out / f"checkpoint-{k}" / "adapter_model.safetensors").write_bytes(b"x")
    (out / f"checkpoint-{k}" / "adapter_config.json").write_text("{}")


def test_prune_keeps_the_last_two_resume_states_and_every_adapter(tmp_path):
    for k in range(1, 6):
        _save(tmp_path, k)
        _adapter(tmp_path, k)
        resume.prune(tmp_path, k)
    kept = [k for k in range(1, 6) if (tmp_path / f"checkpoint-{k}" / resume.RESUME_DIR).exists()]
    assert kept == [4, 5]
    assert all((tmp_path / f"checkpoint-{k}" / "adapter_model.safetensors").is_file() for k in range(1, 6))
    assert resume.last_complete_round(tmp_path) == 5
    # a party one round behind (killed while saving round 5) still resumes from round 4
    (tmp_path / "checkpoint-5" / resume.RESUME_DIR / resume.STATE_FILE).unlink()
    assert resume.last_complete_round(tmp_path) == 4
    assert resume.restore(Ctx(), tmp_path, 4, 4)["w"].shape == (2, 3)


@pytest.mark.parametrize("limit", [1, 3])
def test_prune_honours_save_total_limit_but_keeps_what_resume_needs(tmp_path, limit):
    for k in range(1, 6):
        _save(tmp_path, k)
        _adapter(tmp_path, k)
        resume.prune(tmp_path, k, save_total_limit=limit)
    adapters = [k for k in range(1, 6) if (tmp_path / f"checkpoint-{k}" / "adapter_model.safetensors").exists()]
    assert adapters == list(range(6 - limit, 6))
    assert [k for k in range(1, 6) if (tmp_path / f"checkpoint-{k}" / resume.RESUME_DIR).exists()] == [4, 5]
    assert resume.read_state(tmp_path, 4) is not None  # limit 1: checkpoint-4 keeps only its resume state
    assert not (tmp_path / "checkpoint-1").exists()  # nothing left in it: the folder goes too
    assert resume.last_complete_round(tmp_path) == 5


def test_agree_round_takes_the_lowest_and_rejects_nonsense(tmp_path):
    from xfed.errors import FrameError
    from xfed.operators.horizontal_chatglm.protocol import Preflight, parse

    def report(meta: dict) -> Preflight:
        return parse(Preflight, "node-1", meta)

    assert resume.agree_round(Ctx(attempt=0), tmp_path, {"node-1": report({"resume_round": 3})}) == 0
    for k in (1, 2, 3):
        _save(tmp_path, k)
    ctx = Ctx()
    assert resume.agree_round(ctx, tmp_path, {"node-1": report({"resume_round": 3}),
                                              "node-2": report({"resume_round": 1})}) == 1
    assert "node-2: 1" in ctx.events[-1][1]["message"]
    assert resume.agree_round(Ctx(), tmp_path, {"node-1": report({})}) == 0  # a party without the field starts over
    for nonsense in ("2", -1, True):
        with pytest.raises(FrameError, match="node-1: malformed hcg.preflight message: resume_round"):
            report({"resume_round": nonsense})
    assert resume.resume_round(Ctx(attempt=0), tmp_path) is None
    assert resume.resume_round(Ctx(attempt=2), tmp_path) == 3


def test_restore_returns_the_round_and_drops_later_states(tmp_path):
    for k in (1, 2, 3):
        _save(tmp_path, k, value=float(k))
    tensors = resume.restore(Ctx(), tmp_path, 2, 4)
    np.testing.assert_array_equal(tensors["w"], np.full((2, 3), 2.0, np.float32))
    assert resume.last_complete_round(tmp_path) == 2  # round 3 is trained again, its old state is gone
    assert (tmp_path / "checkpoint-3").is_dir() and not (tmp_path / "checkpoint-3" / resume.RESUME_DIR).exists()
    assert resume.restore(Ctx(), tmp_path, 0, 4) is None
    assert resume.last_complete_round(tmp_path) == 0


def test_restore_refuses_a_changed_schedule_and_a_missing_round(tmp_path):
    _save(tmp_path, 1, rounds=4)
    with pytest.raises(JobError, match=r"assist_trainer: .*checkpoint-1.*written for 4 rounds.*plans 5"):
        resume.restore(Ctx(), tmp_path, 1, 5)
    with pytest.raises(JobError, match="no complete resume state for round 2"):
        resume.restore(Ctx(), tmp_path, 2, 4)


def test_trainer_checkpoint_needs_the_trainer_state(tmp_path):
    _save(tmp_path, 1)  # saved by a party that did not train
    trainer = SimpleNamespace()
    assert resume.trainer_checkpoint(Ctx(), tmp_path, 0, trainer) is None
    assert resume.trainer_checkpoint(Ctx(), tmp_path, 1, None) is None
    with pytest.raises(JobError, match="without the trainer state"):
        resume.trainer_checkpoint(Ctx(), tmp_path, 1, trainer)
    folder = tmp_path / "checkpoint-1" / resume.RESUME_DIR
    state = json.loads((folder / resume.STATE_FILE).read_text())
    (folder / resume.STATE_FILE).write_text(json.dumps({**state, "trainer_state": True}))
    (folder / resume.TRAINER_STATE_NAME).write_text("{}")
    assert resume.trainer_checkpoint(Ctx(), tmp_path, 1, trainer) == str(folder)
    assert trainer._load_from_checkpoint("anything") is None  # the aggregate in place is kept


def test_earlier_records_keeps_rounds_up_to_start(tmp_path):
    path = tmp_path / "metrics.json"
    assert resume.earlier_records(path, 2) == []
    path.write_text(json.dumps({"rounds": [{"round": 1}, {"round": 2}, {"round": 3}, "junk"]}))
    assert resume.earlier_records(path, 2) == [{"round": 1}, {"round": 2}]


def test_restore_refuses_another_jobs_state_saying_whose_it_is(tmp_path):
    """Job ids restart when Redis forgets; the uid in every resume state tells the old job 1 from the new."""
    old = {"job": "1", "uid": "aaaa1111", "namespace": "demo"}
    resume.save_round_state(tmp_path, 2, 4, {"w": np.zeros((2, 3), np.float32)}, None, node="n", attempt=0, job=old)
    mine = Ctx()
    mine.job_id, mine.job_uid = "1", "bbbb2222"
    with pytest.raises(JobError, match=r"^assist_trainer: .*checkpoint-2/xfed_resume: resume state of job 1 "
                                       r"\(uid aaaa1111, namespace 'demo'\), not of this job 1 \(uid bbbb2222\); "
                                       r"refusing to resume from another job's state$"):
        resume.restore(mine, tmp_path, 2, 4)
    mine.job_uid = "aaaa1111"  # the same job's next attempt resumes
    assert resume.restore(mine, tmp_path, 2, 4)["w"].shape == (2, 3)


@pytest.mark.parametrize("limit", [None, 1, 3])
def test_prune_for_the_next_round_looks_only_at_what_the_last_call_left(tmp_path, limit):
    full, incremental = tmp_path / "full", tmp_path / "incremental"
    for k in range(1, 9):
        for out in (full, incremental):
            _save(out, k)
            _adapter(out, k)
        resume.prune(full, k, save_total_limit=limit)
        resume.prune(incremental, k, save_total_limit=limit, pruned_for=k - 1)
    on_disk = lambda out: sorted(str(p.relative_to(out)) for p in out.rglob("*"))  # noqa: E731
    assert on_disk(incremental) == on_disk(full)
    # a resume state left in an old checkpoint (by an earlier process) is not looked at again...
    _save(incremental, 2)
    resume.prune(incremental, 9, save_total_limit=limit, pruned_for=8)
    assert resume.read_state(incremental, 2) is not None
    # ...but a process's first prune looks at every checkpoint
    resume.prune(incremental, 9, save_total_limit=limit)
    assert resume.read_state(incremental, 2) is None
