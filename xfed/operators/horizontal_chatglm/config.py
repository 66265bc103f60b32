"""`train_params` of the horizontal_chatglm operator: aggregation, encryption, peft, trainer, dataset.

Pydantic only; `trainer` keys are checked against the installed `transformers.TrainingArguments`, read
lazily from its source (xfed.operators.horizontal_chatglm.training_args) so that validating never imports torch.

A label trainer's stage config may be partial when there is an assist trainer: the assist
trainer's `train_params` are authoritative and `merge.merge_authoritative` combines the two models.
Validate a partial config with `Params.model_validate(d, context={"complete": False})`.
"""
from __future__ import annotations

import string
from fractions import Fraction
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from xfed.aggregation.privacy import DpParams
from xfed.aggregation.settings import Csprng, Encryption, KeyExchange, Otp, Plain
from xfed.aggregation.strategy import FedAvg, Strategy, StrategyChoice
from xfed.config.base import ConfigModel, ExactlyOne, fail, reraise
from xfed.errors import ConfigError
from xfed.operators.horizontal_chatglm.training_args import (
    FORCED_TRAINER_ARGS,
    check_trainer_args,
    trainer_kwargs,
)

PEFT_TYPES = ("LORA", "PREFIX_TUNING")
AGG_MAX_DENOMINATOR = 10_000  # agg_steps given as a float such as 0.2 or 0.1: recover the fraction meant


def _complete(info: ValidationInfo) -> bool:
    return (info.context or {}).get("complete", True)


# ---------------------------------------------------------------- aggregation
class Aggregation(ConfigModel):
    """When parties meet and how their updates are weighted."""

    agg_steps: float | int | None = Field(
        None, description="0 < f <= 1: aggregate after every fraction f of the run (0.2 -> 5 rounds); "
                          "an integer n >= 1: every n optimizer steps.")
    weighting: Literal["num_examples", "uniform"] = Field(
        "num_examples", description="FedAvg weights: each party's number of training examples, or equal.")
    min_parties: int | None = Field(
        None, ge=1, description="With encryption.otp.dropout: the fewest label trainers a round may sum "
                                "(threshold <= min_parties <= label trainers; default the threshold).")
    strategy: StrategyChoice | None = Field(
        None, description='Server strategy on the round\'s weighted mean: a name ("fedadam") or '
                          '{"fedadam": {"server_lr": 0.03}}; fedavg (default), fedavgm, fedadam, fedyogi, '
                          "fedadagrad (docs/CONFIG.md lists their parameters).")
    fedprox_mu: float = Field(0.0, ge=0, allow_inf_nan=False,
                              description="FedProx μ: adds μ/2·‖θ − θ_global‖² over the trainable adapter "
                                          "parameters to every party's local loss (0: off).")
    dp: DpParams | None = Field(None, description="Client-level differential privacy (clip, Gaussian noise, "
                                                  "accounted over the job's rounds); needs weighting uniform.")

    @field_validator("agg_steps", mode="before")
    @classmethod
    def _agg_steps(cls, v: Any) -> float | int | None:
        rule = "must be a fraction 0 < f <= 1 of the run or an integer step interval >= 1"
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PydanticCustomError("agg_steps", f"{rule}, got {v!r}")
        if isinstance(v, int):
            if v < 1:
                raise PydanticCustomError("agg_steps", f"{rule}, got {v!r}")
            return v
        if v > 1 and v.is_integer():  # 2.0 means an interval of 2 steps
            return int(v)
        if not 0 < v <= 1:
            raise PydanticCustomError("agg_steps", f"{rule}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _dp_needs_uniform(self) -> Aggregation:
        if self.dp is not None and self.weighting != "uniform":
            fail("aggregation", [(("dp",), "needs weighting \"uniform\" (an example-count weight would scale a "
                                          "party's sensitivity with its share of the examples)")])
        return self

    @property
    def is_fraction(self) -> bool:
        return isinstance(self.agg_steps, float)

    def build_strategy(self, rounds: int | None = None) -> Strategy:
        """The configured server strategy for a job of `rounds` rounds (FedAvg when none is set)."""
        return self.strategy.build(rounds) if self.strategy is not None else FedAvg()

    @property
    def every(self) -> Fraction | int:
        """The schedule's unit: an exact `Fraction` of the run (0.2 -> 1/5, no float drift) or an int step
        interval; None only in a partial config."""
        if isinstance(self.agg_steps, float):
            return Fraction(str(self.agg_steps)).limit_denominator(AGG_MAX_DENOMINATOR)
        return self.agg_steps


# ---------------------------------------------------------------- peft
class Lora(ConfigModel):
    """peft.LoraConfig options (the common ones; task_type is always CAUSAL_LM)."""

    task_type: Literal["CAUSAL_LM"] = "CAUSAL_LM"
    r: int = Field(8, ge=1, le=4096)
    target_modules: list[str] | str = Field(
        "auto", description='Module names, a peft regex string, "all-linear", or "auto" (per architecture).')
    exclude_modules: list[str] | str | None = None
    lora_alpha: float = Field(32, gt=0)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    fan_in_fan_out: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: bool | str = Field(True, description="peft: true, false, or a method such as \"gaussian\", \"pissa\".")
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict[str, int] = Field(default_factory=dict)
    alpha_pattern: dict[str, float] = Field(default_factory=dict)
    inference_mode: Literal[False] = False

    @field_validator("target_modules", mode="before")
    @classmethod
    def _targets(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip():
            return v
        if isinstance(v, list) and v and all(isinstance(m, str) and m.strip() for m in v):
            return v
        raise PydanticCustomError("target_modules", 'must be "auto", a non-empty list of module names or '
                                                    "a regex string, got {value}", {"value": repr(v)})


class PrefixTuning(ConfigModel):
    """P-tuning v2 (peft PREFIX_TUNING): trainable key/value prefixes in every layer."""

    task_type: Literal["CAUSAL_LM"] = "CAUSAL_LM"
    pre_seq_len: int = Field(20, ge=1, le=4096, description="Prefix length (peft's num_virtual_tokens).")
    prefix_projection: bool = Field(False, description="Reparametrise the prefix through a 2-layer MLP.")
    prefix_hidden_size: int | None = Field(None, ge=1, description="MLP hidden size (default: THUDM's, the model's hidden size, on ChatGLM "
                                                       "folders; peft's encoder_hidden_size on native models).")
    prefix_init_std: float | None = Field(None, gt=0, le=10, description="Standard deviation of the prefix embedding's "
                                          "initial N(0, std²) draw (default: nn.Embedding's N(0, 1), as THUDM and peft).")

    @classmethod
    def known_keys(cls) -> set[str]:
        return super().known_keys() | {"num_virtual_tokens"}

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, data: Any) -> Any:
        # peft spells the prefix length num_virtual_tokens; accept it, but not both at once.
        if isinstance(data, dict) and "num_virtual_tokens" in data:
            data = dict(data)
            if "pre_seq_len" in data:
                fail("PREFIX_TUNING", [(("num_virtual_tokens",), "give pre_seq_len or num_virtual_tokens, not both")])
            data["pre_seq_len"] = data.pop("num_virtual_tokens")
        return data


class Peft(ExactlyOne):
    """Exactly one of `LORA`, `PREFIX_TUNING`."""

    _CHOICES = PEFT_TYPES
    LORA: Lora | None = None
    PREFIX_TUNING: PrefixTuning | None = None

    @property
    def kind(self) -> str:
        return self.chosen

    def config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for peft's LoraConfig / PrefixTuningConfig (target_modules may be "auto")."""
        if self.LORA is not None:
            return self.LORA.model_dump(exclude_none=True)
        p = self.PREFIX_TUNING
        assert p is not None  # exactly one is set
        kw = {"task_type": p.task_type, "num_virtual_tokens": p.pre_seq_len, "prefix_projection": p.prefix_projection}
        if p.prefix_hidden_size is not None:
            kw["encoder_hidden_size"] = p.prefix_hidden_size
        return kw

    @property
    def prefix_init_std(self) -> float | None:
        """PREFIX_TUNING's prefix_init_std (None: the embedding's own init; always None for LoRA)."""
        return self.PREFIX_TUNING.prefix_init_std if self.PREFIX_TUNING is not None else None


# ---------------------------------------------------------------- dataset
def _check_pattern(pattern: str, *, allowed: tuple[str, ...], sizes: tuple[int, ...],
                   required: tuple[str, ...] = ()) -> str:
    """A str.format pattern with only positional {} slots (as many as `sizes` allows) or only named
    fields from `allowed` (including all of `required`); PydanticCustomError naming what is wrong."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise PydanticCustomError("pattern", "not a valid pattern: {why}", {"why": str(exc)}) from None
    if "" in fields and any(fields):
        raise PydanticCustomError("pattern", "mixes {} slots and named fields")
    if all(f == "" for f in fields):
        if len(fields) not in sizes:
            want = " or ".join(str(n) for n in sizes)
            raise PydanticCustomError("pattern", "needs {want} {} slots, found {n}", {"want": want, "n": len(fields)})
        return pattern
    unknown = sorted({f for f in fields if f not in allowed})
    if unknown:
        named = ", ".join("{" + a + "}" for a in allowed)
        raise PydanticCustomError("pattern", "unknown field(s) {unknown} (use {} slots or {named})",
                                  {"unknown": ", ".join(unknown) or "{}", "named": named})
    missing = [f for f in required if f not in fields]
    if missing:
        raise PydanticCustomError("pattern", "needs the field(s) {missing}",
                                  {"missing": ", ".join("{" + m + "}" for m in missing)})
    return pattern


class DatasetParams(ConfigModel):
    """How records become prompts and labels."""

    max_src_length: int = Field(100, ge=1, le=1_000_000, description="Prompt tokens kept (truncated beyond).")
    max_dst_length: int = Field(100, ge=1, le=1_000_000, description="Answer tokens kept (truncated beyond).")
    prompt_pattern: str = Field("{}：\n问：{}\n答：", description="str.format pattern with one {} slot (query) "
                                                               "or two (instruction, query), or the named fields "
                                                               "{instruction} and {query}.")
    key_query: str = Field("input", description="QA: the instance key holding the question.")
    key_answer: str = Field("output", description="QA: the instance key holding the answer.")
    prompt_column: str | None = Field(None, description="json/jsonl: column with the prompt (default key_query).")
    response_column: str | None = Field(None, description="json/jsonl: column with the answer (default key_answer).")
    history_column: str | None = Field(None, description="json/jsonl: column with [[query, answer], ...] turns.")
    history_template: str | None = Field(None, description='Format of one past turn: two {} slots (query, answer), '
                                                           'three (index, query, answer), or the named fields '
                                                           '{index} {round} {query} {answer}; default '
                                                           '"[Round {index}]\\n问：{query}\\n答：{answer}\\n".')
    ignore_pad_token_for_loss: bool = True
    metrics: list[str] | None = Field(None, description='Scores of each round\'s evaluation: "exact_match", "rouge_l" '
                                                        '(character ROUGE-L; the default pair) and THUDM ptuning\'s '
                                                        '"rouge-1", "rouge-2", "rouge-l", "bleu-4" (0..100).')

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str] | None) -> list[str] | None:
        from .metrics_thudm import KNOWN_METRICS

        unknown = [m for m in v or [] if m not in KNOWN_METRICS]
        if unknown:
            raise PydanticCustomError("metric", "unknown metric(s) {unknown} (known: {known})",
                                      {"unknown": ", ".join(unknown), "known": ", ".join(KNOWN_METRICS)})
        return v

    @field_validator("prompt_pattern")
    @classmethod
    def _prompt_pattern(cls, v: str) -> str:
        return _check_pattern(v, allowed=("instruction", "query"), sizes=(1, 2), required=("query",))

    @field_validator("history_template")
    @classmethod
    def _history_template(cls, v: str | None) -> str | None:
        if v is None:
            return v
        return _check_pattern(v, allowed=("index", "round", "query", "answer"), sizes=(2, 3),
                              required=("query", "answer"))


# ---------------------------------------------------------------- the whole train_params
class Params(ConfigModel):
    """`train_info.train_params` of a horizontal_chatglm stage.

    Validated complete by default (peft and aggregation.agg_steps required; encryption
    defaults to otp, dataset and trainer to their defaults). With
    `context={"complete": False}` every section is optional (a label trainer's partial config).
    """

    aggregation: Aggregation | None = None
    encryption: Encryption | None = None
    peft: Peft | None = None
    trainer: dict[str, Any] | None = Field(None, description="transformers.TrainingArguments keyword arguments "
                                                             "(XFL's no_cuda is accepted as use_cpu).")
    dataset: DatasetParams | None = None

    @field_validator("trainer")
    @classmethod
    def _trainer(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v:
            reraise("trainer", check_trainer_args(v), None)
        return v

    @model_validator(mode="after")
    def _completed(self, info: ValidationInfo) -> Params:
        if not _complete(info):
            return self
        problems = []
        if self.peft is None:
            problems.append((("peft",), f"exactly one of {', '.join(PEFT_TYPES)} is required"))
        if self.aggregation is None or self.aggregation.agg_steps is None:
            problems.append((("aggregation", "agg_steps"), "required key is missing"))
        fail("train_params", problems)
        if self.encryption is None:
            self.encryption = Encryption(otp=Otp())
        if self.dataset is None:
            self.dataset = DatasetParams()
        if self.trainer is None:
            self.trainer = {}
        return self

    # --- what the operator reads ---
    @property
    def peft_kind(self) -> str:
        """'LORA' or 'PREFIX_TUNING'."""
        if self.peft is None:
            raise ValueError("train_params.peft is not set (partial config)")
        return self.peft.kind

    def peft_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for peft's LoraConfig / PrefixTuningConfig (target_modules may be "auto")."""
        if self.peft is None:
            raise ValueError("train_params.peft is not set (partial config)")
        return self.peft.config_kwargs()

    def trainer_kwargs(self) -> dict[str, Any]:
        """transformers.TrainingArguments keyword arguments (no_cuda mapped to use_cpu)."""
        return trainer_kwargs(self.trainer)

    # a complete Params (the operator's) has every section; these say so to the type checker
    @property
    def agg(self) -> Aggregation:
        assert self.aggregation is not None, "train_params.aggregation: partial config"
        return self.aggregation

    @property
    def enc(self) -> Encryption:
        assert self.encryption is not None, "train_params.encryption: partial config"
        return self.encryption

    @property
    def data(self) -> DatasetParams:
        assert self.dataset is not None, "train_params.dataset: partial config"
        return self.dataset

    def encryption_dict(self) -> dict[str, Any]:
        """{"otp": {...all keys with defaults...}} or {"plain": {...}}: the fingerprinted form."""
        return self.enc.model_dump(exclude_none=True)


def validated_params(raw: dict[str, Any], where: str, *, complete: bool = True) -> Params:
    """train_params as the config's Params model: complete (defaults filled), or partial (a label trainer's
    own keys, which the assist trainer's complete them); one-line errors naming `where`."""
    try:
        model = Params.model_validate(raw, context={"complete": complete})
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        loc = ".".join(str(part) for part in first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{where}: train_params.{loc}: {first['msg']}{more}") from None
    return model


def check_stage(stage: Any, *, complete: bool) -> list[tuple[str, ...]]:
    """Stage-level needs of this operator beyond train_params: [(dotted key, message[, "note"])]."""
    problems: list[tuple[str, ...]] = []
    if stage.input.pretrained_model is None:
        problems.append(("input.pretrained_model.path", "required: every party loads the same base model"))
    if stage.identity == "label_trainer" and not stage.input.trainset:
        problems.append(("input.trainset", "a label trainer needs at least one dataset"))
    trainer = (stage.train_info.train_params or {}).get("trainer")
    for key, value in (trainer.items() if isinstance(trainer, dict) else ()):
        if key in FORCED_TRAINER_ARGS and value != FORCED_TRAINER_ARGS[key]:
            problems.append((f"train_info.train_params.trainer.{key}",
                             f"ignored: xfed sets {FORCED_TRAINER_ARGS[key]!r} (it saves an adapter at every "
                             "aggregation point and logs every step itself)", "note"))
    return problems


__all__ = [
    "Aggregation", "Csprng", "DatasetParams", "Encryption", "KeyExchange", "Lora", "Otp", "Params", "Peft",
    "Plain", "PrefixTuning", "check_stage", "check_trainer_args", "trainer_kwargs", "FORCED_TRAINER_ARGS",
    "PEFT_TYPES", "validated_params",
]
