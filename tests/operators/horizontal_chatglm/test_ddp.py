"""model_info.config.nproc_per_node checks (the 2-rank run itself: tests/integration/test_concurrent_jobs.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from xfed.errors import ConfigError
from xfed.operators.horizontal_chatglm.config import Params
from xfed.operators.horizontal_chatglm.ddp import DdpGroup, check_device, nproc_of, wants_cuda


def _stage(**config):
    return SimpleNamespace(model_info=SimpleNamespace(config=config))


def test_nproc_per_node_defaults_to_one_and_takes_a_whole_number():
    assert nproc_of(_stage(), identity="label_trainer", node="n1", cuda=False) == 1
    assert nproc_of(_stage(nproc_per_node=2), identity="label_trainer", node="n1", cuda=False) == 2
    for bad in (0, -1, "2", 2.0, True, 65, None):
        with pytest.raises(ConfigError, match=r"^n1: model_info.config.nproc_per_node: .* is not a whole number "
                                              r"from 1 to 64$"):
            nproc_of(_stage(nproc_per_node=bad), identity="label_trainer", node="n1", cuda=False)


def test_only_label_trainers_run_several_ranks_and_cuda_needs_a_gpu_per_rank(monkeypatch):
    assert nproc_of(_stage(nproc_per_node=1), identity="assist_trainer", node="a", cuda=False) == 1
    with pytest.raises(ConfigError, match="2 processes are for label trainers; the assist_trainer runs as one"):
        nproc_of(_stage(nproc_per_node=2), identity="assist_trainer", node="a", cuda=False)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    with pytest.raises(ConfigError, match="2 processes but this machine has 1 CUDA device"):
        nproc_of(_stage(nproc_per_node=2), identity="label_trainer", node="n1", cuda=True)


def test_the_backend_follows_the_partys_own_trainer_settings(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    def own(raw: dict) -> Params:
        return Params.model_validate(raw, context={"complete": False})

    assert wants_cuda(own({})) and wants_cuda(own({"trainer": {"per_device_train_batch_size": 2}}))
    assert not wants_cuda(own({"trainer": {"no_cuda": True}})) and not wants_cuda(own({"trainer": {"use_cpu": True}}))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert not wants_cuda(own({}))
    cpu_trainer = SimpleNamespace(args=SimpleNamespace(use_cpu=True))
    check_device(DdpGroup(0, 2, cuda=False), cpu_trainer, "n1")  # agrees: nothing to say
    with pytest.raises(ConfigError, match="started for CUDA, but the job's trainer settings train on CPU"):
        check_device(DdpGroup(0, 2, cuda=True), cpu_trainer, "n1")
