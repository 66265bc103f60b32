"""growing_json.py: files rewritten every round are byte for byte what encoding the whole object gives,
with each list entry encoded once."""
from __future__ import annotations

import json
import random

from transformers import TrainerState

from xfed.operators.horizontal_chatglm import growing_json
from xfed.operators.horizontal_chatglm.growing_json import EncodedList, dumps
from xfed.operators.horizontal_chatglm.metrics import MetricsLog


def _record(rng: random.Random, k: int) -> dict:
    return {"round": k, "train_loss": rng.random(), "node": "nöde-1", "contributors": ["node-1", "node-2"],
            "nested": {"b": [1, 2.5, None, True], "a": {}}, "empty": [], "nan": float("nan"), "z": -1e-300}


def test_dumps_is_json_dumps_of_the_whole_object_for_any_length():
    rng = random.Random(0)
    head = {"zeta": 1, "alpha": {"x": [1, 2]}, "rounds": 7, "job": "ü"}  # "rounds" is overridden by the list
    cache, items = EncodedList(), []
    for k in range(6):
        expected = json.dumps({**head, "rounds": items}, indent=2, sort_keys=True)
        assert dumps(head, "rounds", cache.texts(items)) == expected
        items.append(_record(rng, k))


def test_each_entry_is_encoded_once_and_a_replaced_or_edited_list_afresh(monkeypatch):
    calls = []
    real = json.dumps
    monkeypatch.setattr(growing_json.json, "dumps", lambda obj, **kw: calls.append(obj) or real(obj, **kw))
    cache, items = EncodedList(), [{"a": 1}, {"b": 2}]
    cache.texts(items)
    items.append({"c": 3})
    cache.texts(items)
    assert calls == [{"a": 1}, {"b": 2}, {"c": 3}]  # the first two were not encoded again
    calls.clear()
    fresh = [dict(x) for x in items]  # equal, but other objects: a reloaded list
    assert cache.texts(fresh) == cache.texts(fresh) and len(calls) == 3
    calls.clear()
    fresh[1] = {"b": 20}  # an entry replaced in place
    assert json.loads("[" + ",".join(cache.texts(fresh)) + "]")[1] == {"b": 20}
    assert json.loads("[" + ",".join(cache.texts(fresh[:1])) + "]") == [{"a": 1}]  # shortened


def test_trainer_state_file_is_what_save_to_json_writes(tmp_path):
    state = TrainerState(global_step=3, max_steps=9, logging_steps=1, train_batch_size=4, best_metric=0.5,
                         stateful_callbacks={"TrainerControl": {"args": {"should_log": False}, "attributes": {}}})
    for k in range(4):
        state.log_history.append({"loss": 0.1 * k, "step": k, "grad_norm": float(k)})
        reference, ours = tmp_path / "hf.json", tmp_path / "ours.json"
        state.save_to_json(str(reference))
        growing_json.save_trainer_state(state, ours)
        assert ours.read_bytes() == reference.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
    assert TrainerState.load_from_json(str(ours)).log_history == state.log_history
    other = TrainerState(global_step=1)  # another state through the same cache
    growing_json.save_trainer_state(other, ours)
    other.save_to_json(str(reference))
    assert ours.read_bytes() == reference.read_bytes()


def test_metrics_log_file_is_the_whole_object_encoded(tmp_path):
    rng = random.Random(1)
    log = MetricsLog(tmp_path / "metrics.json", {"node": "node-1"})
    log.write(rounds=3)
    for k in range(1, 4):
        log.add(_record(rng, k))
        assert (tmp_path / "metrics.json").read_text() == json.dumps(
            {"node": "node-1", "rounds": log.rounds}, indent=2, sort_keys=True)
    log.rounds = log.rounds[:1]  # a resumed attempt keeps the earlier records
    log.write(status="resumed")
    assert (tmp_path / "metrics.json").read_text() == json.dumps(
        {"node": "node-1", "rounds": log.rounds, "status": "resumed"}, indent=2, sort_keys=True)
