"""Serve an MLflow model folder (`MLmodel`) through its `python_function` flavor, loaded with
`mlflow.pyfunc.load_model` (the `mlflow` extra: mlflow-skinny and pandas). Any flavor with a pyfunc
face is served: scikit-learn, XGBoost, LightGBM, a custom `PythonModel`, .... The folder's Python
environment (`python_env.yaml`, `conda.yaml`) is the user's concern: the model runs in the server's
environment. Loading unpickles the model, so it needs `--allow-pickle`.

The metadata is the model's signature, read from `MLmodel` without loading it:
- a column signature (a DataFrame) becomes one input per column, `[-1]` each, named as the column;
  the columns are put back together as a DataFrame for `predict`;
- a tensor signature becomes its tensors (`input` for one unnamed tensor), given to `predict` as an
  array (one) or a dict of arrays (several);
- the outputs likewise (`output` for one unnamed tensor or column).
A model saved without a signature is served with a declaration (`--runtime-option inputs=...`, a
sidecar `FOLDER.json`, see `declared_specs`), or refused with a message saying so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelpod.errors import ModelLoadError
from modelpod.extras import needs_extra
from modelpod.runtime.declared_specs import declared, sidecar
from modelpod.runtime.file_model import Arrays, Description, batch_first
from modelpod.runtime.pickled_files import PickledFileModel
from modelpod.types import TensorSpec, datatype_of, numpy_dtype

# MLflow's column types -> Open Inference Protocol datatypes
COLUMN_TYPES = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
    "binary": "BYTES",
}


def _spec(item: Mapping[str, Any], default_name: str, where: str) -> tuple[TensorSpec, bool]:
    """One signature entry -> (its spec, whether it is a column)."""
    name = str(item.get("name") or default_name)
    if item.get("type") == "tensor":
        tensor = item.get("tensor-spec") or {}
        try:
            datatype = datatype_of(np.empty(0, dtype=np.dtype(tensor.get("dtype"))))
        except TypeError:
            raise ModelLoadError(
                f"{where}: tensor {name!r} has dtype {tensor.get('dtype')}, which V2 has not"
            ) from None
        return TensorSpec(name, datatype, tuple(tensor.get("shape") or (-1,))), False
    column_type = COLUMN_TYPES.get(str(item.get("type")))
    if column_type is None:
        raise ModelLoadError(
            f"{where}: column {name!r} is of type {item.get('type')}, which V2 has no tensor for"
        )
    return TensorSpec(name, column_type, (-1,)), True


def _specs(text: Any, default_name: str, where: str) -> tuple[tuple[TensorSpec, ...], bool]:
    items = json.loads(text) if isinstance(text, str) else text
    if not isinstance(items, list) or not items:
        raise ModelLoadError(f"{where}: expected a list of columns or tensors")
    single = len(items) == 1
    pairs = [
        _spec(item, default_name if single else f"{default_name}_{i}", where) for i, item in enumerate(items)
    ]
    return tuple(spec for spec, _ in pairs), all(column for _, column in pairs)


@lru_cache(maxsize=64)
def read_signature(path: str, stamp: tuple[int, int]) -> tuple[Any, ...]:
    """(inputs, inputs are columns, outputs, outputs are columns) from `MLmodel`; () without one."""
    with needs_extra("mlflow", f"serving {Path(path).name}"):
        import yaml

    where = f"{path}/MLmodel"
    try:
        document = yaml.safe_load((Path(path) / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ModelLoadError(f"cannot read {where}: {error}") from None
    if not isinstance(document, dict) or "python_function" not in (document.get("flavors") or {}):
        raise ModelLoadError(f"{where}: the model has no python_function flavor, which modelpod serves")
    signature = document.get("signature") or {}
    if not signature.get("inputs"):
        return ()
    inputs, input_columns = _specs(signature["inputs"], "input", f"{where} signature inputs")
    if not signature.get("outputs"):
        raise ModelLoadError(f"{where}: the signature has no outputs; save the model with them")
    outputs, output_columns = _specs(signature["outputs"], "output", f"{where} signature outputs")
    return inputs, input_columns, outputs, output_columns


class MlflowModel(PickledFileModel):
    """An MLflow model folder served through its pyfunc flavor. Subclass it to add processing."""

    runtime_name: ClassVar[str] = "mlflow"
    platform: ClassVar[str] = "mlflow"
    pyfunc: Any = None

    def describe(self) -> Description:
        status = (self.path / "MLmodel").stat()
        found = read_signature(str(self.path.resolve()), (status.st_mtime_ns, status.st_size))
        self.columns = bool(found) and found[1]
        wanted = declared(self.path, self.config)
        if not found and {"inputs", "outputs"} - set(wanted):
            raise ModelLoadError(
                f"{self.path}: the model was saved without a signature, so its inputs and outputs are "
                "unknown; save it with one (mlflow.models.infer_signature), or declare them: "
                '--runtime-option inputs="x:FP64[-1,4]" outputs="y:INT64[-1]", '
                f"or a sidecar {sidecar(self.path).name}"
            )
        inputs = wanted.get("inputs", found[0] if found else ())
        outputs = wanted.get("outputs", found[2] if found else ())
        return Description(inputs, outputs, batchable=batch_first((*inputs, *outputs)))

    def setup(self) -> None:
        self.refuse_unless_trusted(
            f"{self.path}: loading an MLflow model unpickles it, which runs code from the folder"
        )
        with needs_extra("mlflow", f"serving {self.path.name}"):
            import mlflow.pyfunc
            import pandas

        self.pandas = pandas
        self.pyfunc = mlflow.pyfunc.load_model(str(self.path))

    def teardown(self) -> None:
        self.pyfunc = None

    def model_input(self, inputs: Arrays) -> Any:
        """The request's tensors as pyfunc's `predict` takes them."""
        specs = self.description.inputs
        converted = {s.name: _plain(inputs[s.name], s) for s in specs}
        if self.columns:
            return self.pandas.DataFrame(converted)
        return converted[specs[0].name] if len(specs) == 1 else converted

    def run(self, inputs: Arrays) -> Arrays:
        answer = self.pyfunc.predict(self.model_input(inputs))
        specs = self.description.outputs
        if isinstance(answer, self.pandas.DataFrame):
            columns = list(answer.columns)
            values = [
                answer[s.name] if s.name in columns else answer[columns[i]] for i, s in enumerate(specs)
            ]
        elif isinstance(answer, dict):
            values = [answer[s.name] for s in specs]
        else:
            values = [answer]
        if len(values) != len(specs):
            raise ValueError(f"the model answered {len(values)} value(s) for {len(specs)} output(s)")
        return {s.name: _typed(value, s) for s, value in zip(specs, values, strict=True)}


def _plain(array: np.ndarray[Any, Any], spec: TensorSpec) -> np.ndarray[Any, Any]:
    """Text as str (the protocol brings bytes); a column as one value per row."""
    if spec.datatype == "BYTES":
        flat = [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1)]
        array = np.array(flat, dtype=object).reshape(array.shape)
    return array


def _typed(value: Any, spec: TensorSpec) -> np.ndarray[Any, Any]:
    array = np.asarray(value)
    return array.astype(object) if spec.datatype == "BYTES" else array.astype(numpy_dtype(spec.datatype))
