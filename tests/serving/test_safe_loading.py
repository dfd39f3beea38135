"""Serving loads models only from the registry, and a network that carries code is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers.networks import numeric_inputs, numeric_prep
from tests.helpers.registry_models import COLUMNS, SIGNAL, labelled_frame, log_pyfunc
from wd_pipeline.errors import ConfigError
from wd_pipeline.ml.preprocessing import NUMERIC_INPUT
from wd_pipeline.ml.training import MODEL_FILE
from wd_pipeline.tracking import registry


def network_with_code(folder: Path, marker: Path, frame: pd.DataFrame) -> str:
    """A working network whose Lambda layer, a Python lambda, touches ``marker`` when run; saved with a
    preprocessing file, as a training unit is, so it logs and would serve like a real one.

    Keras stores such a lambda as bytecode: whoever loads the file unsafely runs it.
    """
    import keras

    payload = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")
    inputs = keras.Input(shape=(len(SIGNAL),), name=NUMERIC_INPUT)
    hidden = keras.layers.Lambda(payload, name="payload")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    folder.mkdir()
    keras.Model(inputs, outputs).save(folder / MODEL_FILE)
    numeric_prep(frame[SIGNAL].to_numpy(), SIGNAL).save(folder)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once already
    return str(folder / MODEL_FILE)


@pytest.mark.slow
def test_a_network_with_a_lambda_layer_is_refused_by_the_serving_loader(workspace: Path) -> None:
    import keras

    frame = labelled_frame(rows=50)
    marker = workspace / "code-ran"
    keras_path = network_with_code(workspace / "payload", marker, frame)
    model_uri, _ = log_pyfunc(keras_path, frame, SIGNAL, experiment="safe-mode")

    with pytest.raises(ValueError, match="arbitrary code execution"):
        registry.model_probability(model_uri, frame[SIGNAL])
    assert not marker.exists()

    # The same file loaded unsafely does run the stored code: what the refusal prevents.
    network = keras.saving.load_model(keras_path, compile=False, safe_mode=False)
    network.predict(numeric_inputs(frame[SIGNAL].to_numpy()), verbose=0)
    assert marker.exists()


@pytest.mark.parametrize(
    "uri",
    [
        "runs:/0123abcd/model",
        "/tmp/model",
        "file:///tmp/model",
        "https://example.org/model.zip",
        "models://profile@databricks/wd/1",
        "models:",
    ],
)
def test_a_model_uri_outside_the_registry_is_refused(uri: str) -> None:
    expected = (
        f"model URI {uri!r} is refused: models load only from the MLflow model registry "
        "(models:/NAME/VERSION or models:/NAME@ALIAS)"
    )
    features = pd.DataFrame(np.zeros((1, len(COLUMNS))), columns=COLUMNS)
    with pytest.raises(ConfigError) as refused:
        registry.model_probability(uri, features)
    assert str(refused.value) == expected
    for reader in (registry.input_columns, registry.input_schema, registry.model_config, registry.model_preprocessing):
        with pytest.raises(ConfigError):
            reader(uri)


@pytest.mark.parametrize("uri", ["models:/wd-classifier/3", "models:/wd-classifier@champion", "models:/m-0123abcd"])
def test_registry_uris_pass_the_check(uri: str) -> None:
    assert registry.require_registry_uri(uri) == uri
