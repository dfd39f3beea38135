"""What a run can be refused for before it starts: the data against the settings, without training.

The command line calls :func:`check_data` before it imports Prefect, so a misspelled label
or a missing file ends in its one line in the time it takes to read the file, not after a
temporary Prefect server has started. The flow checks the same things again during ingest
(a run triggered from the UI or the API never passes through here), with the same
functions and therefore the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from wd_pipeline.config import PipelineConfig
from wd_pipeline.data.sources import locate, parse_source, read_source
from wd_pipeline.data.validation import check_features, check_label


@dataclass(frozen=True)
class DataCheck:
    """What the check found, for the line the command prints before the run starts."""

    source: str
    rows: int
    features: int


def check_data(config: PipelineConfig) -> DataCheck:
    """Locate, read and validate ``config.data`` as ingest will; raises the DataError ingest would raise.

    Everything but the split and its files: the source (exists, readable, inside the data
    folders), the header, the label and the positive class, each feature's role and
    content, and the columns named by ``slice_by`` and ``group_column``.
    """
    source = locate(config.data)
    parsed = parse_source(read_source(source), config.na_values, text_as_dictionary=True)
    labelled = check_label(parsed.table, config)
    checked = check_features(parsed.table, config, labelled, where=parsed.where, declared=parsed.declared)
    return DataCheck(source.uri, len(checked.label), len(checked.schema.columns))
