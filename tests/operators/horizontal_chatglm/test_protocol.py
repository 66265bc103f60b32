"""The operator's control messages: pydantic models on the wire; a malformed one names its sender."""
import pytest

from xfed.errors import FrameError
from xfed.operators.horizontal_chatglm import protocol


@pytest.mark.parametrize("message", [
    protocol.Hello(train_params={"trainer": {"per_device_train_batch_size": 2}}),
    protocol.Hello(error="node-1: train_params.peft: bad"),
    protocol.ParamsReply(train_params={"aggregation": {"agg_steps": 0.5}}, conflicts=["a: assist=1 party=2"],
                         send_initial=True),
    protocol.ParamsReply(ok=False, error="why", blame="node-2"),
    protocol.Preflight(fingerprints={"peft": "ab", "base_model_parts": {"config.json": "cd"}}, num_steps=4,
                       num_examples=8, resume_round=2),
    protocol.Plan(ok=True, rounds=3, warnings=["w"], resume_from=1),
    protocol.Rejoin(train_params={}, incarnation=2),
    protocol.Replan(ok=True, train_params={"peft": {"LORA": {}}}, rounds=5),
])
def test_each_message_reads_back_as_it_was_sent(message):
    wire = message.model_dump(mode="json", exclude_none=True)  # what protocol.send writes as meta
    assert protocol.parse(type(message), "node-1", wire) == message


@pytest.mark.parametrize(("kind", "meta", "where"), [
    (protocol.Plan, {"rounds": 3}, "ok"),                                    # required field missing
    (protocol.Plan, {"ok": True, "rounds": "3"}, "rounds"),                  # a string where a number belongs
    (protocol.Preflight, {"num_steps": -1}, "num_steps"),                    # out of range
    (protocol.ParamsReply, {"ok": True, "train_params": [1]}, "train_params"),
    (protocol.Hello, {"train_params": {}, "extra": 1}, "extra"),              # unknown key
    (protocol.Rejoin, {"train_params": {}, "incarnation": 0}, "incarnation"),
])
def test_a_malformed_message_is_a_frame_error_naming_sender_tag_and_field(kind, meta, where):
    with pytest.raises(FrameError, match=rf"^node-2: malformed {kind.tag} message: {where}") as info:
        protocol.parse(kind, "node-2", meta)
    assert info.value.blame == "node-2" and "\n" not in str(info.value)
