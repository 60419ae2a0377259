"""KServe model server of the Titanic model: predictor and transformer (`python -m pipeline.serving`)."""

import re

# A contract between the two servers, kept in one place: the predictor ends every missing-feature error with the
# version it serves, and a transformer that still builds another model's features reads that version from it and
# loads its metadata (a transformer started before the first model, or a request built just before a switch).
SERVES = re.compile(r"missing (?:feature\(s\)|input tensor\(s\)) .* of model version ([\w.-]+)")


def missing(what: str, names: list[str], version: str) -> str:
    """The predictor's error for absent inputs; `what` is "feature(s)" or "input tensor(s)". Matches SERVES."""
    return f"missing {what} {', '.join(names)} of model version {version}"
