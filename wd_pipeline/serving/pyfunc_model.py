"""The served model: raw feature columns in, probability of the positive class out.

Logged as an MLflow "model from code": this file is copied next to the model and run on
load, so it must not import ``wd_pipeline``; a server needs only MLflow and Keras.
The Keras flavour refuses a column signature, which is why the network is wrapped here.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class WeightDecayClassifier(PythonModel):
    """Select the trained feature columns, in training order, and predict probabilities."""

    def load_context(self, context) -> None:
        import keras

        self._network = keras.saving.load_model(context.artifacts["keras_model"], compile=False, safe_mode=True)
        self._features = list(context.model_config["input_columns"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        missing = [name for name in self._features if name not in frame.columns]
        if missing:
            raise ValueError(f"input lacks feature columns {missing}")
        features = frame[self._features].to_numpy(dtype=np.float32)
        probability = np.asarray(self._network.predict(features, batch_size=4096, verbose=0)).ravel()
        return pd.DataFrame({"probability": probability.astype(np.float64)})


mlflow.models.set_model(WeightDecayClassifier())
