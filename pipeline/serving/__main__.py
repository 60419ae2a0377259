"""`python -m pipeline.serving predictor|transformer [KServe ModelServer args]`: parse, log, settings, serve."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sys
import warnings
from pathlib import Path

from fastapi.exceptions import FastAPIDeprecationWarning
from fastapi.responses import JSONResponse
from kserve import ModelServer
from kserve import model_server as kserve_server
from kserve.predictor_config import PredictorConfig
from prometheus_client import REGISTRY
from timing_asgi import TimingMiddleware

from pipeline.errors import PipelineError
from pipeline.log import configure_logging
from pipeline.runtime import freeze_startup_heap
from pipeline.serving import artifacts
from pipeline.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serving", parents=[kserve_server.parser],
                                     description="KServe predictor or transformer of the Titanic model.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("role", choices=["predictor", "transformer"], help="which half of the InferenceService to run")
    parser.add_argument("--model_dir", default=artifacts.DEFAULT_MODEL_DIR,
                        help="local model folder (KServe's storage initializer copies storageUri here)")
    parser.add_argument("--model_uri", default=None,
                        help="s3://bucket/<model>/<version> to load instead of --model_dir (local runs)")
    parser.add_argument("--model_version", default=None,
                        help="version id, 'production' or 'latest', resolved through the model registry (local runs)")
    parser.add_argument("--runtime", choices=["onnx", "sklearn"], default="onnx",
                        help="predictor: evaluate the forest with ONNX Runtime or with scikit-learn")
    parser.add_argument("--drift_window", type=int, default=500, help="transformer: feature vectors in the drift window")
    parser.add_argument("--drift_threshold", type=float, default=0.2, help="transformer: PSI above which a feature drifted")
    parser.add_argument("--drift_min_samples", type=int, default=100,
                        help="transformer: vectors needed before PSI is exported")
    parser.add_argument("--feature_lookup", default=True, type=lambda v: v.lower() in ("1", "true", "yes"),
                        help="transformer: serve id-only instances from the Redis online store")
    # Name defaults to MODEL_NAME; a hung predictor must not hold a request for KServe's 600 s default.
    # A latency log line per request repeats KServe's request_*_seconds histograms: off unless asked for.
    parser.set_defaults(model_name=None, predictor_request_timeout_seconds=5, enable_latency_logging=False)
    return parser


def _predictor(args, settings: Settings):
    from pipeline.serving.predictor import TitanicPredictor

    loader = functools.partial(artifacts.load, settings, model_dir=args.model_dir, model_uri=args.model_uri,
                               model_version=args.model_version, with_model=True)
    model = TitanicPredictor(args.model_name, loader, runtime=args.runtime)
    model.load()
    return model


def _transformer(args, settings: Settings):
    from pipeline.serving import transformer
    from pipeline.serving.drift import DriftCollector
    from pipeline.steps.features import GroupStatistics
    from pipeline.store.feature_store import FeatureStore

    if not args.predictor_host:
        raise PipelineError("the transformer needs --predictor_host")
    explicit = args.model_uri or args.model_version or Path(args.model_dir).is_dir()
    # Without a model folder of its own (the usual case in the cluster: storageUri goes to the predictor),
    # the transformer learns the version from the predictor's answers and reads that folder from S3.
    model_artifacts = artifacts.load(settings, model_dir=args.model_dir, model_uri=args.model_uri,
                                     model_version=args.model_version, with_model=False) if explicit else None

    def locate(version: str) -> artifacts.ModelArtifacts:
        uri = f"s3://{settings.bucket_models}/{settings.model_name}/{version}"
        return artifacts.load(settings, model_uri=uri, with_model=False)

    model = transformer.TitanicTransformer(
        args.model_name, model_artifacts, feature_store=FeatureStore(settings) if args.feature_lookup else None,
        drift_options={"window": args.drift_window, "threshold": args.drift_threshold,
                       "min_samples": args.drift_min_samples},
        locate=locate, max_instances=settings.transformer_max_instances,
        group_statistics=GroupStatistics(settings))  # read only for models trained with group features
    REGISTRY.register(DriftCollector(lambda: model.drift))
    app = kserve_server.app
    # The web app's caps do not protect a transformer reached directly.
    app.add_middleware(transformer.BodyLimit, max_bytes=settings.transformer_max_body_bytes)
    app.add_exception_handler(transformer.InvalidInstances,
                              lambda _, exc: JSONResponse(status_code=400, content=transformer.error_body(exc.errors)))
    app.add_exception_handler(transformer.TooManyInstances,
                              lambda _, exc: JSONResponse(status_code=413,
                                                          content={"error": str(exc), "max_instances": exc.limit}))
    app.add_exception_handler(transformer.PredictorError,
                              lambda _, exc: JSONResponse(status_code=exc.status, content={"error": exc.message}))
    return model


def _lean(app, event_loop: str) -> None:
    """Drop per-request costs of the stock model server that serve nobody (profiled in bench/probe.py, #16)."""
    # KServe 0.21 answers with FastAPI's deprecated ORJSONResponse, and pandas' catch_warnings resets the
    # once-per-place registry: the transformer formatted and wrote that warning on almost every request.
    warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)
    # KServe's TimingMiddleware only feeds 'kserve.trace' log lines (latency is in its Prometheus
    # histograms), yet costs a scan of every route and two getrusage calls per request.
    build = app.build_middleware_stack

    def build_without_timing():  # at the first request: after ModelServer configured logging and middleware
        if not logging.getLogger("kserve.trace").isEnabledFor(logging.INFO):
            app.user_middleware = [m for m in app.user_middleware if m.cls is not TimingMiddleware]
        return build()

    app.build_middleware_stack = build_without_timing
    # ModelServer.start runs its own asyncio.run(): --event_loop reaches uvicorn's config, never the loop.
    if event_loop in ("auto", "uvloop"):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.set_event_loop(asyncio.new_event_loop())  # ModelServer.setup_event_loop asks for a current loop


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    args.model_name = args.model_name or settings.model_name
    try:
        model = _predictor(args, settings) if args.role == "predictor" else _transformer(args, settings)
    except PipelineError as exc:
        print(f"error: {args.role}: {exc}", file=sys.stderr)
        return 1
    predictor_config = PredictorConfig(
        predictor_host=args.predictor_host,
        predictor_protocol=args.predictor_protocol,
        predictor_use_ssl=args.predictor_use_ssl,
        predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
        predictor_request_retries=args.predictor_request_retries,
        # Always for the transformer: its model is ready only while the predictor's is (KServe asks the predictor's
        # /v1/models/<name>), so its readiness probe keeps it out of the Service until the chain can answer.
        predictor_health_check=args.enable_predictor_health_check or args.role == "transformer",
    )
    _lean(kserve_server.app, args.event_loop)
    freeze_startup_heap()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=args.workers,
                enable_grpc=args.enable_grpc, enable_docs_url=args.enable_docs_url,
                enable_latency_logging=args.enable_latency_logging, predictor_config=predictor_config,
                ).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
