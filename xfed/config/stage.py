"""The model of one stage in trainer_config_{NODE_ID}.json (a JSON list of stages).

`train_info.train_params` stays a dict here: its shape belongs to the operator named by
`model_info.name` (xfed.operators.<name>.config.Params validates it).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from xfed.config.base import ConfigModel
from xfed.config.placeholders import fill_placeholders, resolve_path, unknown_placeholder_message

IDENTITIES = ("label_trainer", "assist_trainer")
# "QA": XFL's {instruction, instances[{input, output}]} json; json/jsonl: records with columns.
DATASET_TYPES = ("QA", "json", "jsonl")


def _check_path(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    message = unknown_placeholder_message(v)
    if message:
        raise ValueError(message)
    return v


PathStr = Annotated[str, AfterValidator(_check_path)]


class DatasetRef(ConfigModel):
    """One entry of input.trainset / valset / testset."""

    type: str = Field("QA", description=f"One of {', '.join(DATASET_TYPES)}.")
    path: PathStr = Field(description="A file, or a folder whose *.json / *.jsonl files are all read.")
    name: str | None = Field(None, description="A label for reports.")

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        for known in DATASET_TYPES:
            if v.lower() == known.lower():
                return known
        raise ValueError(f"unknown dataset type {v!r} (known: {', '.join(DATASET_TYPES)})")


class ModelRef(ConfigModel):
    """input.pretrained_model / input.adapter_model: a local folder."""

    path: PathStr
    name: str | None = None


class Input(ConfigModel):
    trainset: list[DatasetRef] = Field(default_factory=list)
    valset: list[DatasetRef] = Field(default_factory=list)
    testset: list[DatasetRef] = Field(default_factory=list)
    pretrained_model: ModelRef | None = None
    adapter_model: ModelRef | None = Field(None, description="Start from this adapter instead of a fresh one.")


class Output(ConfigModel):
    path: PathStr = Field(description="Folder for adapters and metrics; use [JOB_ID] so jobs do not overwrite each other.")


class ModelInfo(ConfigModel):
    name: str = Field(description="The operator: horizontal_chatglm | horizontal_mean.")
    config: dict[str, Any] = Field(default_factory=dict, description="Accepted for XFL compatibility.")


class TrainInfo(ConfigModel):
    train_params: dict[str, Any] = Field(default_factory=dict,
                                         description="Validated by the operator's Params model.")
    interaction_params: dict[str, Any] = Field(default_factory=dict, description="XFL; accepted, unused.")
    device: str | None = Field(None, description="XFL; accepted, unused (use trainer.use_cpu).")


class Stage(ConfigModel):
    """One stage of a node's trainer_config file."""

    identity: Literal["label_trainer", "assist_trainer"]
    model_info: ModelInfo
    input: Input = Field(default_factory=Input)
    output: Output
    train_info: TrainInfo = Field(default_factory=TrainInfo)
    inference: bool = Field(False, description="XFL; accepted, must be false (xfed trains).")

    @field_validator("inference")
    @classmethod
    def _inference(cls, v: bool) -> bool:
        if v:
            raise ValueError("inference stages are not supported; xfed runs training stages")
        return v

    def paths(self) -> Iterator[tuple[str, str, str]]:
        """(dotted key, path, kind) for every path in the stage; kind is input-file|input-dir|output."""
        for section in ("trainset", "valset", "testset"):
            for i, ref in enumerate(getattr(self.input, section)):
                yield f"input.{section}[{i}].path", ref.path, "input-file"
        for section in ("pretrained_model", "adapter_model"):
            ref = getattr(self.input, section)
            if ref is not None:
                yield f"input.{section}.path", ref.path, "input-dir"
        yield "output.path", self.output.path, "output"

    def resolved(self, base_dir: str | Path) -> Stage:
        """A copy with every relative path made absolute against `base_dir` (placeholders kept)."""
        return self._map_paths(lambda path: resolve_path(path, base_dir))

    def filled(self, *, job_id: str, node_id: str, stage_id: int) -> Stage:
        """A copy with [JOB_ID] [NODE_ID] [STAGE_ID] filled in every path, inputs and output alike."""
        return self._map_paths(lambda path: fill_placeholders(path, job_id=job_id, node_id=node_id,
                                                              stage_id=stage_id))

    def _map_paths(self, fn) -> Stage:
        data = self.model_dump()
        inp = data["input"]
        for section in ("trainset", "valset", "testset"):
            for ref in inp[section]:
                ref["path"] = fn(ref["path"])
        for section in ("pretrained_model", "adapter_model"):
            if inp[section] is not None:
                inp[section]["path"] = fn(inp[section]["path"])
        data["output"]["path"] = fn(data["output"]["path"])
        return Stage.model_validate(data)
