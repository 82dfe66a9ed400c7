"""Open Inference Protocol v2 (KServe, MLServer, Triton): tensors <-> records.

A request carries one input tensor per feature column, named after the column,
of shape [n] (or [n, 1]); numeric columns use a numeric datatype (FP32, FP64,
INT*, UINT*), categorical columns BYTES (numbers are accepted and read as text).
`null` stands for a missing value. The response has a `prediction` tensor [n]
(labels, or values for regression) and, for classification, a `probabilities`
tensor [n, k] in the order of the model's classes (listed in `parameters`).
"""

import math
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from modelsphere.data.schema import Schema
from modelsphere.serving.schemas import UnicodeText

NUMERIC_DATATYPES = {
    "FP16",
    "FP32",
    "FP64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
}
DATATYPES = Literal[
    "BOOL",
    "FP16",
    "FP32",
    "FP64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "BYTES",
]
Scalar = Optional[Union[StrictInt, StrictFloat, StrictStr, StrictBool]]


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="a feature column of the model")
    shape: List[int] = Field(..., description="[n] or [n, 1]")
    datatype: DATATYPES
    parameters: Optional[Dict[str, Any]] = None
    data: List[Scalar] = Field(..., description="n values, row-major; null = missing")


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["prediction", "probabilities"]
    parameters: Optional[Dict[str, Any]] = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Optional[UnicodeText] = None
    parameters: Optional[Dict[str, Any]] = None
    inputs: List[InferInput] = Field(..., min_length=1)
    outputs: Optional[List[RequestedOutput]] = None


class InferOutput(BaseModel):
    name: str
    shape: List[int]
    datatype: str
    parameters: Optional[Dict[str, Any]] = None
    data: List[Union[StrictInt, StrictFloat, StrictStr]]


class InferResponse(BaseModel):
    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None
    outputs: List[InferOutput]


class OipError(ValueError):
    """A request that is well-formed JSON but not a valid tensor set for this model."""

    def __init__(self, loc: List[Union[str, int]], message: str):
        super().__init__(message)
        self.loc, self.message = loc, message


def records_from_inputs(request: InferRequest, schema: Schema) -> List[Dict[str, Any]]:
    """Check the tensors against the schema and turn them into records."""
    features = set(schema.features)
    allowed = features | ({schema.id_column} if schema.id_column else set())
    by_name: Dict[str, InferInput] = {}
    rows: Optional[int] = None
    for position, tensor in enumerate(request.inputs):
        loc: List[Union[str, int]] = ["body", "inputs", position]
        if tensor.name not in allowed:
            raise OipError(
                loc + ["name"], f"{tensor.name!r} is not a feature of this model"
            )
        if tensor.name in by_name:
            raise OipError(loc + ["name"], f"input {tensor.name!r} is given twice")
        n = _rows_of(tensor, loc)
        if rows is not None and n != rows:
            raise OipError(loc + ["shape"], f"{n} rows, but the first input has {rows}")
        rows = n
        by_name[tensor.name] = tensor
        if tensor.name == schema.id_column:
            continue  # accepted beside the features; not scored
        _check_values(tensor, tensor.name in schema.numeric, loc)
    missing = [name for name in schema.features if name not in by_name]
    if missing:
        raise OipError(["body", "inputs"], f"missing input(s) for feature(s) {missing}")
    names = [name for name in by_name if name in features]
    columns = [by_name[name].data for name in names]
    return [dict(zip(names, values)) for values in zip(*columns)]


def _rows_of(tensor: InferInput, loc) -> int:
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise OipError(
            loc + ["shape"], f"shape must be [n] or [n, 1] with n >= 1, got {shape}"
        )
    if len(tensor.data) != shape[0]:
        raise OipError(
            loc + ["data"],
            f"{len(tensor.data)} values for shape {shape} ({shape[0]} expected)",
        )
    return shape[0]


def _finite_number(value: Any) -> bool:
    if isinstance(value, (bool, str)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False


def _check_values(tensor: InferInput, numeric: bool, loc) -> None:
    integer_type = tensor.datatype.startswith(("INT", "UINT"))
    if numeric:
        if tensor.datatype not in NUMERIC_DATATYPES:
            raise OipError(
                loc + ["datatype"],
                f"{tensor.name!r} is numeric: use FP32, FP64 or INT*, not "
                f"{tensor.datatype}",
            )
        for index, value in enumerate(tensor.data):
            if value is None:
                continue
            if not _finite_number(value):
                raise OipError(
                    loc + ["data", index], f"{value!r} is not a finite number"
                )
            if integer_type and value != int(value):
                raise OipError(
                    loc + ["data", index],
                    f"{value!r} is not an integer ({tensor.datatype})",
                )
        return
    if tensor.datatype != "BYTES" and not integer_type:
        raise OipError(
            loc + ["datatype"],
            f"{tensor.name!r} is categorical: use BYTES (or INT* for integer codes), "
            f"not {tensor.datatype}",
        )
    for index, value in enumerate(tensor.data):
        wrong = isinstance(value, (bool, float)) or (
            integer_type and isinstance(value, str)
        )
        if wrong:
            raise OipError(
                loc + ["data", index],
                f"{tensor.name!r} is categorical: {value!r} does not fit "
                f"{tensor.datatype}",
            )


def outputs_from_columns(
    columns: Dict[str, Any], classes, task: str
) -> List[InferOutput]:
    """`prediction` [n] and, for classification, `probabilities` [n, k]."""
    labels = columns["prediction"]
    n = len(labels)
    if task == "regression":
        return [
            InferOutput(
                name="prediction",
                shape=[n],
                datatype="FP64",
                data=[float(v) for v in labels],
            )
        ]
    int_labels = isinstance(classes[0], int)
    prediction = InferOutput(
        name="prediction",
        shape=[n],
        datatype="INT64" if int_labels else "BYTES",
        data=[int(v) if int_labels else str(v) for v in labels],
    )
    matrix = [columns[f"{label}_probability"] for label in classes]
    flat = [float(matrix[k][i]) for i in range(n) for k in range(len(classes))]
    probabilities = InferOutput(
        name="probabilities",
        shape=[n, len(classes)],
        datatype="FP64",
        parameters={"classes": [str(label) for label in classes]},
        data=flat,
    )
    return [prediction, probabilities]


def model_metadata(
    schema: Schema, feature_state, name: str, version: str, platform: str, metrics
) -> Dict[str, Any]:
    """OIP model metadata, plus the task, classes, levels and training metrics."""
    levels = {col["name"]: col["levels"] for col in feature_state["categorical"]}
    inputs = [
        {
            "name": column,
            "datatype": "FP64",
            "shape": [-1],
            "parameters": {"kind": "numeric"},
        }
        for column in schema.numeric
    ] + [
        {
            "name": column,
            "datatype": "BYTES",
            "shape": [-1],
            "parameters": {"kind": "categorical", "levels": levels[column]},
        }
        for column in schema.categorical
    ]
    if schema.task == "regression":
        outputs = [{"name": "prediction", "datatype": "FP64", "shape": [-1]}]
    else:
        label_type = "INT64" if isinstance(schema.classes[0], int) else "BYTES"
        outputs = [
            {"name": "prediction", "datatype": label_type, "shape": [-1]},
            {
                "name": "probabilities",
                "datatype": "FP64",
                "shape": [-1, len(schema.classes)],
            },
        ]
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {
            "task": schema.task,
            "target": schema.target,
            "classes": schema.classes,
            "id_column": schema.id_column,
            "training_metrics": metrics,
        },
    }
