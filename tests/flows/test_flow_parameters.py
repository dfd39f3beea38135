"""Each flow's parameters are its settings model's fields: same names, types, constraints,
defaults and descriptions, and the Prefect form (live or parsed from the entrypoint) shows them."""

from __future__ import annotations

import inspect
import types
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from prefect.utilities.callables import parameter_schema, parameter_schema_from_entrypoint
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from flows.pipeline import weight_decay_pipeline
from flows.score import score
from wd_pipeline.config import PROJECT_ROOT, PipelineConfig, ScoreSettings

FLOWS = [
    pytest.param(weight_decay_pipeline, PipelineConfig, "flows/pipeline.py:weight_decay_pipeline", id="pipeline"),
    pytest.param(score, ScoreSettings, "flows/score.py:score", id="score"),
]


def _field(annotation: Any, default: Any = inspect.Parameter.empty) -> FieldInfo:
    if default is inspect.Parameter.empty:
        return FieldInfo.from_annotation(annotation)
    return FieldInfo.from_annotated_attribute(annotation, default)


def _without_none(annotation: Any) -> Any:
    """``X`` of ``X | None``, else None."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [member for member in get_args(annotation) if member is not type(None)]
        if len(rest) == 1 and len(get_args(annotation)) == 2:
            return rest[0]
    return None


def _same(where: str, expected: FieldInfo, actual: FieldInfo) -> list[str]:
    problems = []
    for part in ("annotation", "metadata", "description", "title"):
        if getattr(actual, part) != getattr(expected, part):
            problems.append(f"{where}: {part} {getattr(actual, part)!r} != the model's {getattr(expected, part)!r}")
    return problems


def drift(signature: inspect.Signature, model: type[BaseModel]) -> list[str]:
    """Every way ``signature`` differs from ``model``'s fields; empty when they agree."""
    parameters = signature.parameters
    if list(parameters) != list(model.model_fields):
        return [f"parameters {list(parameters)} != fields {list(model.model_fields)}"]
    problems = []
    for name, expected in model.model_fields.items():
        parameter = parameters[name]
        if expected.default_factory is not None:
            # Computed when the model is built (e.g. from the environment): the flow leaves
            # it None so that the process running the flow decides, not the one deploying it.
            outer = _field(parameter.annotation)
            inner = _without_none(outer.annotation)
            if parameter.default is not None or inner is None:
                problems.append(f"{name}: needs the model's type | None, default None")
                continue
            problems += _same(name, expected, _field(inner))
            for part in ("description", "title"):
                if getattr(outer, part) != getattr(expected, part):
                    problems.append(
                        f"{name}: {part} {getattr(outer, part)!r} != the model's {getattr(expected, part)!r}"
                    )
            continue
        problems += _same(name, expected, _field(parameter.annotation, parameter.default))
        if expected.is_required():
            if parameter.default is not inspect.Parameter.empty:
                problems.append(f"{name}: the model requires it, the flow gives a default")
        elif parameter.default != expected.get_default(call_default_factory=True):
            problems.append(f"{name}: default {parameter.default!r} != the model's {expected.default!r}")
    return problems


def signature_of(flow: Any) -> inspect.Signature:
    return inspect.signature(flow.fn, eval_str=True)


@pytest.mark.parametrize(("flow", "model", "entrypoint"), FLOWS)
def test_flow_parameters_are_the_model_fields(flow, model, entrypoint) -> None:
    assert drift(signature_of(flow), model) == []


def _replace(signature: inspect.Signature, name: str, **change: Any) -> inspect.Signature:
    parameters = [p.replace(**change) if p.name == name else p for p in signature.parameters.values()]
    return signature.replace(parameters=parameters)


@pytest.mark.parametrize(
    ("name", "change", "problem"),
    [
        ("min_rows_per_class", {"annotation": int}, "min_rows_per_class: metadata []"),  # the drift this test found
        ("epochs", {"default": 50}, "epochs: default 50 != the model's 100"),
        ("learning_rate", {"annotation": Annotated[float, "no description"]}, "learning_rate: metadata"),
        ("work_dir", {"annotation": str, "default": ".wd-pipeline"}, "work_dir: needs the model's type | None"),
    ],
)
def test_drift_is_reported(name: str, change: dict, problem: str) -> None:
    drifted = _replace(signature_of(weight_decay_pipeline), name, **change)
    problems = drift(drifted, PipelineConfig)
    assert problems and problems[0].startswith(problem), problems


def test_a_missing_or_extra_parameter_is_reported() -> None:
    signature = signature_of(weight_decay_pipeline)
    shorter = signature.replace(parameters=list(signature.parameters.values())[:-1])
    assert drift(shorter, PipelineConfig)[0].startswith("parameters [")


@pytest.mark.parametrize(("flow", "model", "entrypoint"), FLOWS)
def test_the_form_shows_descriptions_and_constraints(flow, model, entrypoint, monkeypatch) -> None:
    """``prefect deploy`` imports the flow, or parses its source when that fails: both give one form."""
    live = parameter_schema(flow).model_dump_for_openapi()
    monkeypatch.chdir(PROJECT_ROOT)
    assert parameter_schema_from_entrypoint(entrypoint).model_dump_for_openapi() == live
    properties = live["properties"]
    assert list(properties) == list(model.model_fields)
    for position, (name, field) in enumerate(model.model_fields.items()):
        assert properties[name]["description"] == field.description, name
        assert properties[name]["title"] == field.title, name  # not Prefect's default, the parameter's name
        assert properties[name]["position"] == position, name  # the UI sorts the form by it
    assert live.get("required", []) == [name for name, field in model.model_fields.items() if field.is_required()]


def test_the_pipeline_form_carries_the_bounds() -> None:
    properties = parameter_schema(weight_decay_pipeline).model_dump_for_openapi()["properties"]
    assert (properties["epochs"]["minimum"], properties["epochs"]["maximum"]) == (1, 100_000)
    assert (properties["min_rows_per_class"]["minimum"], properties["grid"]["items"]["minimum"]) == (2, 0)
    assert properties["rule"]["enum"] == ["one-se", "best"]
    assert properties["grid"]["type"] == "array"


@pytest.mark.parametrize("model", [PipelineConfig, ScoreSettings])
def test_every_setting_has_its_own_title(model: type[BaseModel]) -> None:
    titles = {name: field.title for name, field in model.model_fields.items()}
    assert all(titles.values()), [name for name, title in titles.items() if not title]
    assert len(set(titles.values())) == len(titles), "two settings share a title"


# Where each group of the form starts: the data, the model, the grid and its cross-validation,
# the registry and its gate, and how the work runs.
FORM_GROUPS = ["data", "hidden_units", "modes", "experiment", "max_parallel"]


def test_the_pipeline_form_is_grouped_data_model_grid_registry_execution() -> None:
    fields = list(PipelineConfig.model_fields)
    starts = [fields.index(name) for name in FORM_GROUPS]
    assert starts == sorted(starts) and starts[0] == 0
    assert fields.index("label") < fields.index("test_fraction") < starts[1]
    assert starts[1] < fields.index("epochs") < fields.index("learning_rate") < starts[2]
    assert starts[2] < fields.index("grid") < fields.index("folds") < fields.index("selection_metric") < starts[3]
    assert starts[3] < fields.index("gate_metric") < fields.index("min_test_roc_auc") < starts[4]
    assert fields[-1] == "work_dir" and starts[4] < fields.index("dask_workers")
