"""The few exceptions a caller acts on, and the exit codes the DAG relies on."""

# `python -m pipeline evaluate` exits with this code when it rejects a model; the DAG's
# KubernetesPodOperator maps it to "skipped" so `deploy` is skipped rather than failed.
EXIT_MODEL_REJECTED = 99


class PipelineError(Exception):
    """An error with a message meant for the operator; the CLI prints it and exits 1."""


class SourceError(PipelineError):
    """The input could not be fetched, or is not what it claims to be (checksum, format)."""


class SchemaError(PipelineError):
    """The input's structure is unusable as a whole (empty, not CSV, missing columns)."""


class ModelNotFound(PipelineError):
    """A model version (or its artefact) does not exist."""


class FeatureSetNotFound(PipelineError):
    """A feature-set version does not exist in the online store."""


class InvalidInstance(PipelineError):
    """One instance of a prediction request is invalid; names the field and the index."""

    def __init__(self, index: int, field: str, reason: str):
        self.index, self.field, self.reason = index, field, reason
        super().__init__(f"instance {index}: {field}: {reason}")
