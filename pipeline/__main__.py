"""CLI: `python -m pipeline <step> [options]`; parse, configure logging, build Settings, dispatch."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

from pipeline import faults
from pipeline.errors import EXIT_UNEXPECTED, PipelineError
from pipeline.log import configure_logging
from pipeline.settings import Settings

# subcommand -> module exposing add_arguments(parser) and run(settings, **args) -> dict
STEPS = {
    "migrate": "pipeline.steps.migrate",
    "ingest": "pipeline.steps.ingest",
    "features": "pipeline.steps.features",
    "train": "pipeline.steps.train",
    "evaluate": "pipeline.steps.evaluate",
    "run-all": "pipeline.steps.run_all",
    "score": "pipeline.steps.score",
    "deploy": "pipeline.steps.deploy",
}
XCOM_DIR = Path("/airflow/xcom")  # KubernetesPodOperator's do_xcom_push sidecar reads return.json here


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: help texts that already name theirs are left as they are."""

    def _get_help_string(self, action):
        text = action.help or ""
        return text if "default" in text else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="Titanic MLOps pipeline steps.")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, module_name in STEPS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip().splitlines()[0]
        step = sub.add_parser(name, help=doc, description=doc, formatter_class=_HelpFormatter)
        module.add_arguments(step)
        step.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    module, step = args.pop("_module"), args.pop("step")
    settings = Settings()
    configure_logging(settings.log_level)
    try:
        result = module.run(settings, **args)
    except PipelineError as exc:
        print(f"error: {step}: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        fault = faults.describe(exc, settings)
        if fault is None:  # a bug: its traceback, and an exit code Airflow retries (pipeline/errors.py)
            traceback.print_exc()
            return EXIT_UNEXPECTED
        print(fault.line(step), file=sys.stderr)
        return fault.exit_code
    line = json.dumps(result, default=str, sort_keys=True)
    if XCOM_DIR.is_dir():
        (XCOM_DIR / "return.json").write_text(line)
    print(line)
    return getattr(module, "exit_code", lambda r: 0)(result)


if __name__ == "__main__":
    sys.exit(main())
