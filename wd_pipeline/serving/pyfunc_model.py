"""The served model: raw columns in, probability of the positive class and a 0/1 label out.

Logged as an MLflow "model from code": this file is copied next to the model and run on
load, so it must not import ``wd_pipeline``; a server needs only MLflow, Keras and pyarrow.
The network holds its own preprocessing (imputation, vocabularies, normalisation); all this
wrapper does is hand it the columns it was trained on, numeric columns as one float matrix
and each categorical column as strings with gaps spelled as the network's missing token.
Columns the network does not use are ignored here (``score`` passes them through). The
label is the probability at the decision threshold the model was registered with (its model
config's ``threshold``; 0.5 for a model logged before models kept one).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.pyfunc import PythonModel

PREDICT_ROWS = 65536
DEFAULT_THRESHOLD = 0.5  # wd_pipeline.config's, repeated: this file must not import wd_pipeline


class WeightDecayClassifier(PythonModel):
    """Arrange raw columns as the network's named inputs, predict probabilities and label them."""

    def load_context(self, context) -> None:
        import keras

        self._network = keras.saving.load_model(context.artifacts["keras_model"], compile=False, safe_mode=True)
        config = context.model_config
        self._numeric = list(config["numeric_columns"])
        self._categorical = list(config["categorical_columns"])
        self._missing = str(config["missing_token"])
        self._threshold = float(config.get("threshold", DEFAULT_THRESHOLD))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        absent = [name for name in (*self._numeric, *self._categorical) if name not in frame.columns]
        if absent:
            raise ValueError(f"input lacks columns {absent}")
        inputs = self._inputs(frame)
        rows = len(frame)
        parts = [
            np.asarray(
                self._network({name: value[start : start + PREDICT_ROWS] for name, value in inputs.items()}),
            ).ravel()
            for start in range(0, rows, PREDICT_ROWS)
        ]
        probability = (np.concatenate(parts) if parts else np.zeros(0)).astype(np.float64)
        return pd.DataFrame({"probability": probability, "label": (probability >= self._threshold).astype(np.int64)})

    def _inputs(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        inputs = {}
        if self._numeric:
            inputs["numeric"] = frame[self._numeric].to_numpy(dtype=np.float32, na_value=np.nan)
        for index, name in enumerate(self._categorical):
            inputs[f"categorical_{index}"] = self._strings(frame[name]).reshape(-1, 1)
        return inputs

    def _strings(self, column: pd.Series) -> np.ndarray:
        """As the training split holds it: text as is, numbers as Arrow writes them, a gap as the missing token."""
        as_text = pa.array(column.to_numpy(dtype=object, na_value=None), from_pandas=True).cast(pa.string())
        values = as_text.to_numpy(zero_copy_only=False).astype(object)
        values[pd.isna(values)] = self._missing
        return values


mlflow.models.set_model(WeightDecayClassifier())
