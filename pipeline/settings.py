"""The one settings object, read from the environment at entry points only."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of every pipeline step, the model server and the web app.

    Names are the environment variables of ARCHITECTURE.md; build it in `main()` or
    `create_app()` and pass it down, and in tests with keyword overrides.
    """

    model_config = SettingsConfigDict(extra="forbid", case_sensitive=False, populate_by_name=True)

    database_url: str = "postgresql://titanic:titanic@127.0.0.1:5432/titanic"
    """Postgres DSN; a `?options=-csearch_path%3D<schema>` suffix selects a schema."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis (or Valkey) holding the online feature store."""
    s3_endpoint: str = "127.0.0.1:9000"
    """host:port of the S3-compatible object store (no scheme)."""
    s3_access_key: str | None = None
    """S3 access key; never defaulted."""
    s3_secret_key: str | None = None
    """S3 secret key; never defaulted."""
    s3_secure: bool = False
    """Use HTTPS towards the object store."""
    s3_region: str = "us-east-1"
    """Region sent to the object store (S3 servers need one for signing)."""
    bucket_raw: str = "raw"
    """Bucket for original input files."""
    bucket_features: str = "features"
    """Bucket for offline feature snapshots."""
    bucket_models: str = "models"
    """Bucket for model versions (`<model_name>/<version>/`)."""
    dataset_url: str = "https://raw.githubusercontent.com/sebastianlueders/Titanic-Survivor-Prediction-Model/76fbc3f32a95beb5d7428987f4256f12d7c9ebff/titanic/train.csv"
    """Where the raw CSV comes from: http(s)://, s3://bucket/key or a local path."""
    dataset_sha256: str | None = "7d118fef8b6ccf7f81111877bc388536f7b1e498a655e3d649d19aaa010e9f6f"
    """Expected sha256 of the dataset; checked when set."""
    ingest_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1)
    """Largest input file ingest reads, in bytes (2 MiB: ~30,000 passengers); a larger one is refused.

    Measured peak of the ingest process at 2 MiB: ~290 MiB, ~400 MiB when every row is rejected;
    its pod has 512 MiB. Raise both together."""
    ingest_allow_local_paths: bool = True
    """Let ingest read local file paths (local development); the chart sets false: a pod's files are no dataset."""
    model_name: str = "titanic"
    """Model and InferenceService name."""
    feature_store_prefix: str = "titanic"
    """Namespace of every Redis key of the feature store."""
    feature_sets_keep: int = Field(default=3, ge=1)
    """How many feature-set versions stay in Redis; older ones are garbage-collected."""
    kserve_url: str = "http://127.0.0.1:8080"
    """Base URL of the KServe transformer the web app calls."""
    model_server_image: str = "titanic-model-server:0.1.0"
    """Image of the predictor and transformer when the deploy step has to create the InferenceService (chart: its tag)."""
    transformer_max_body_bytes: int = Field(default=256 * 1024, ge=1)
    """Largest request body the transformer reads (413 above); the web app's 64 KiB input grows up to ~3x when forwarded (JSON escapes)."""
    transformer_max_instances: int = Field(default=100, ge=1)
    """Most passengers in one transformer request (413 above), the web app's cap."""
    model_sha256: str | None = None
    """sha256 of the served model.joblib as recorded in the registry; checked before unpickling (predictor without database)."""
    airflow_api_url: str | None = None
    """Airflow API server base URL; unset disables the retraining relay."""
    airflow_username: str | None = None
    """Airflow user for the retraining relay."""
    airflow_password: str | None = None
    """Airflow password for the retraining relay."""
    airflow_dag_id: str = "titanic_training"
    """DAG the retraining relay triggers."""
    alert_webhook_token: str | None = None
    """Bearer token Alertmanager must send to `/hooks/alertmanager`; unset disables the relay."""
    retrain_alerts: list[str] = ["TitanicFeatureDrift"]
    """Alert names whose firing triggers retraining (JSON list in the environment)."""
    retrain_cooldown_seconds: int = Field(default=3600, ge=1)
    """At most one retraining per this many seconds, shared by all web app replicas via Redis."""
    postgres_connect_timeout: int = Field(default=10, ge=2)
    """Seconds to wait for a Postgres connection, handshake included (libpq `connect_timeout`)."""
    redis_socket_timeout: float = Field(default=2.0, gt=0)
    """Seconds a Redis command waits for its reply; short: the transformer reads Redis on its event loop."""
    redis_socket_connect_timeout: float = Field(default=2.0, gt=0)
    """Seconds to wait for a Redis connection."""
    s3_connect_timeout: float = Field(default=5.0, gt=0)
    """Seconds to wait for a connection to the object store."""
    s3_read_timeout: float = Field(default=30.0, gt=0)
    """Seconds the object store may stay silent during one request (per read, not the whole transfer)."""
    kube_request_timeout: float = Field(default=30.0, gt=0)
    """Seconds one Kubernetes API request of the deploy step may take."""
    log_level: str = "INFO"
    """Root log level."""
