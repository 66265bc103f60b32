"""horizontal_chatglm `aggregation`: strategy, fedprox_mu and dp as the operator reads them."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from xfed.aggregation.strategy import FedAvg, FedYogi
from xfed.errors import ConfigError
from xfed.operators.horizontal_chatglm.config import Params, validated_params


def _params(**aggregation):
    return {"peft": {"LORA": {}}, "aggregation": {"agg_steps": 0.25, **aggregation}}


def test_defaults_are_todays_fedavg_without_fedprox_or_dp():
    agg = Params.model_validate(_params()).aggregation
    assert isinstance(agg.build_strategy(), FedAvg) and agg.fedprox_mu == 0.0 and agg.dp is None


def test_strategy_fedprox_and_dp_reach_the_operator_typed():
    raw = _params(strategy={"fedyogi": {"server_lr": 0.05, "tau": 0.01}}, fedprox_mu=0.1, weighting="uniform",
                  dp={"epsilon": 4.0, "clip_norm": 0.5})
    params = validated_params(raw, "assist_trainer")  # the model the operator passes around
    agg = params.agg
    strategy = agg.build_strategy()
    assert isinstance(strategy, FedYogi) and strategy.params.server_lr == 0.05 and strategy.params.tau == 0.01
    assert strategy.params.beta_2 == 0.99  # documented default
    assert agg.fedprox_mu == 0.1 and agg.dp.epsilon == 4.0 and agg.dp.delta == 1e-5 and agg.dp.accountant == "rdp"
    assert Params.model_validate(_params(strategy="fedadam")).aggregation.build_strategy().name == "fedadam"


@pytest.mark.parametrize("aggregation, message", [
    ({"strategy": "fedsgd"}, r"aggregation\.strategy: unknown strategy 'fedsgd'"),
    ({"strategy": {"fedadam": {"eta": 0.1}}}, r"aggregation\.strategy\.fedadam\.eta: unknown key"),
    ({"fedprox_mu": -1.0}, r"aggregation\.fedprox_mu: Input should be greater than or equal to 0"),
    ({"dp": {"epsilon": 4.0}}, r"aggregation\.dp: needs weighting \"uniform\""),
    ({"dp": {"epsilon": 0.0}, "weighting": "uniform"}, r"aggregation\.dp\.epsilon: Input should be greater than 0"),
    ({"dp": {"delta": 1e-5}, "weighting": "uniform"}, r"aggregation\.dp\.epsilon: Field required"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(aggregation, message):
    with pytest.raises(ConfigError, match=message) as info:
        validated_params(_params(**aggregation), "assist_trainer")
    assert "\n" not in str(info.value)
    with pytest.raises(ValidationError):
        Params.model_validate(_params(**aggregation))
