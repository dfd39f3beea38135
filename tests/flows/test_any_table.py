"""A run of another table with only its data and label given (plus a small grid to stay quick): the
positive class that belongs to the bundled data must not follow it (issue #13, defaults that fit any table).

Triggered through the flow, as the Prefect form or API does; the same run through a real deployment
is a stack-level check and is not made here."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from flows.pipeline import weight_decay_pipeline
from tests.helpers.registry_models import labelled_frame
from tests.helpers.stores import isolated_store

pytestmark = pytest.mark.slow


def test_a_table_with_a_01_label_runs_with_only_data_and_label(prefect_api, tmp_path) -> None:
    with isolated_store(tmp_path):
        source = tmp_path / "table.csv"
        labelled_frame(rows=200).to_csv(source, index=False)
        state = weight_decay_pipeline(data=str(source), label="y", grid=[0.0], epochs=2, folds=1, return_state=True)
        assert state.type.value == "COMPLETED", state.message
        parent = MlflowClient().get_run(state.result().parent_run_id)
        assert parent.data.params["positive_class"] == ""
        assert parent.data.params["data"] == str(source)
