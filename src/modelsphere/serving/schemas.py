"""Pydantic models built at start-up from the model's saved feature schema, so the
OpenAPI page (/docs) shows the real fields, their descriptions and an example."""

from typing import Annotated, Any, Dict, List, Optional, Union

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
)

from modelsphere.data.schema import Schema

LEVELS_SHOWN = 12
CategoryValue = Optional[Union[StrictStr, StrictInt]]


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate)") from None
    return text


UnicodeText = Annotated[StrictStr, AfterValidator(_valid_unicode)]
IdValue = Optional[Union[UnicodeText, StrictInt]]
# JSON numbers (ints too), finite; not strings or booleans.
NumberValue = Optional[Annotated[float, Strict(), AllowInfNan(False)]]


def example_record(schema: Schema, feature_state: Dict[str, Any]) -> Dict[str, Any]:
    """A realistic record: training medians and the most frequent levels."""
    record: Dict[str, Any] = {}
    for col in feature_state["numeric"]:
        record[col["name"]] = round(col["fill_value"], 4)
    for col in feature_state["categorical"]:
        record[col["name"]] = col["levels"][0] if col["levels"] else None
    return record


def _describe_levels(levels: List[str]) -> str:
    shown = ", ".join(repr(level) for level in levels[:LEVELS_SHOWN])
    more = (
        f" and {len(levels) - LEVELS_SHOWN} more" if len(levels) > LEVELS_SHOWN else ""
    )
    return f"levels seen in training: {shown}{more}"


def record_model(schema: Schema, feature_state: Dict[str, Any]) -> type:
    """One field per feature column (required; null = missing), extra fields
    refused; the id column is optional and echoed back."""
    fields: Dict[str, Any] = {}
    for position, name in enumerate(schema.numeric):
        fields[f"numeric_{position}"] = (
            NumberValue,
            Field(
                ...,
                alias=name,
                description=f"numeric feature {name!r}; null for a missing value",
            ),
        )
    levels = {col["name"]: col["levels"] for col in feature_state["categorical"]}
    for position, name in enumerate(schema.categorical):
        fields[f"categorical_{position}"] = (
            CategoryValue,
            Field(
                ...,
                alias=name,
                description=(
                    f"categorical feature {name!r}; {_describe_levels(levels[name])}; "
                    "other values count as unseen; null for a missing value"
                ),
            ),
        )
    if schema.id_column is not None:
        fields["row_id"] = (
            IdValue,
            Field(
                None,
                alias=schema.id_column,
                description=f"optional id ({schema.id_column!r}), echoed back",
            ),
        )
    config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [example_record(schema, feature_state)]},
    )
    return create_model("Record", __config__=config, **fields)


def predict_request_model(record: type, max_rows: int) -> type:
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        records=(
            List[record],
            Field(
                ...,
                min_length=1,
                description=f"1 to {max_rows} records to score",
            ),
        ),
    )


class Prediction(BaseModel):
    id: Optional[Union[StrictStr, StrictInt]] = Field(
        None, description="the record's id, if it had one"
    )
    prediction: Union[StrictStr, StrictInt, StrictFloat] = Field(
        ..., description="the predicted label, or value for regression"
    )
    probabilities: Optional[Dict[str, float]] = Field(
        None, description="probability of each class (classification only)"
    )


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: List[Prediction]


class ErrorDetail(BaseModel):
    loc: List[Union[str, int]] = Field(..., description="path to the bad field")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    error: str = Field(..., description="what is wrong, in one line")
    detail: List[ErrorDetail] = Field(default_factory=list)
