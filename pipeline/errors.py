"""The few exceptions a caller acts on, and the exit codes the DAG relies on.

Exit codes of `python -m pipeline <step>`, and what Airflow does with each (dags/titanic_training.py mirrors
the constants, since a DAG file imports no project code; tests/dags compares the two):

| code | constant | meaning | Airflow |
| --- | --- | --- | --- |
| 0 | | done; the result is the JSON line on stdout | next task |
| 1 | EXIT_REFUSED | a PipelineError: the input or the state is wrong (bad file, unknown version, failed rollout) | failed, no retry |
| 2 | EXIT_USAGE | wrong arguments (argparse) | failed, no retry |
| 70 | EXIT_UNEXPECTED | any other exception: a bug, printed with its traceback | retried (it may be transient) |
| 75 | EXIT_UNAVAILABLE | Postgres, Redis or S3 unreachable or timing out (pipeline/faults.py); `deploy`: the model server not Ready within `--timeout` (rolled back) | retried with backoff |
| 77 | EXIT_CREDENTIALS | Postgres, Redis or S3 refused the credentials (pipeline/faults.py) | failed, no retry: fix the Secret |
| 99 | EXIT_MODEL_REJECTED | `evaluate` rejected the model | skipped, so `deploy` is skipped |
| 128+N | | killed by signal N (137: OOM-killed or SIGKILL) | retried |

Every non-zero exit but 70 and a signal prints one line, `error: <step>: <what>`, on stderr (faults add
`(<host:port>)`), and no traceback. 70, 75 and 77 follow sysexits.h (EX_SOFTWARE, EX_TEMPFAIL, EX_NOPERM).
"""

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNEXPECTED = 70
EXIT_UNAVAILABLE = 75
EXIT_CREDENTIALS = 77
EXIT_MODEL_REJECTED = 99


class PipelineError(Exception):
    """An error with a message meant for the operator; the CLI prints it and exits `exit_code`."""

    exit_code = EXIT_REFUSED


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
