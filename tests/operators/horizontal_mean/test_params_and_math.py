"""horizontal_mean: parameter validation and the expected (weighted) mean every node checks against."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from xfed.operators.horizontal_mean.config import Params
from xfed.operators.horizontal_mean.operator import contribution, contributors, expected_mean
from xfed.operators.registry import operator_module, params_model


def test_registry_finds_the_operator_and_its_params():
    assert params_model("horizontal_mean") is Params
    assert callable(operator_module("horizontal_mean").run)


def test_defaults_and_json_ints_for_floats():
    p = Params.model_validate({"round_delay_s": 0, "tolerance": 1})
    assert p.rounds == 3 and p.encryption == {"plain": {}} and p.round_delay_s == 0.0


@pytest.mark.parametrize("bad", [{"rounds": 0}, {"rounds": "3"}, {"dim": -1}, {"weighting": "size"},
                                 {"encryption": {"rsa": {}}}, {"encryption": {}}, {"roundz": 3},
                                 {"assist_contributes": 1}])
def test_bad_params_are_refused(bad):
    with pytest.raises(ValidationError):
        Params.model_validate(bad)


def test_contributions_are_deterministic_and_distinct():
    a = contribution(1, "node-1", 0, 5)
    assert a.dtype == np.float32 and np.array_equal(a, contribution(1, "node-1", 0, 5))
    assert not np.array_equal(a, contribution(1, "node-2", 0, 5))
    assert not np.array_equal(a, contribution(1, "node-1", 1, 5))


def test_weighted_expected_mean():
    p = Params(dim=4, weighting="index", assist_contributes=True)
    w = contributors(["n1", "n2"], "agg", p)
    assert w == {"n1": 1.0, "n2": 2.0, "agg": 3.0}
    want = sum(wt * contribution(0, n, 2, 4).astype(np.float64) for n, wt in w.items()) / 6.0
    assert np.allclose(expected_mean(p, w, 2), want)
    assert contributors(["n1"], "agg", Params()) == {"n1": 1.0}


def test_bad_train_params_name_the_file_stage_and_key():
    from types import SimpleNamespace

    from xfed.errors import ConfigError
    from xfed.operators.horizontal_mean.operator import load_params

    ctx = SimpleNamespace(node_id="node-2", stage_id=1,
                          stage=SimpleNamespace(train_info=SimpleNamespace(train_params={"rounds": "three"})))
    with pytest.raises(ConfigError, match=r"trainer_config_node-2.json stage 1: train_info.train_params.rounds: "):
        load_params(ctx)
