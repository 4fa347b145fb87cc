"""Settings from the environment, with embedded single-machine defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
API_VERSION = "2.4.8"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def _env(name: str) -> str | None:
    """A variable's value, None when unset or empty."""
    return os.environ.get(name) or None


def _env_keys(name: str) -> tuple[str, ...]:
    """A comma-separated list of API keys; blanks around and between commas are ignored."""
    return tuple(key.strip() for key in os.environ.get(name, "").split(",") if key.strip())


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("AE_DATA_DIR", PROJECT_ROOT / "data"))
    )
    # repr=False: a URL may hold a password, and a Settings may end up in a log line
    database_url_override: str | None = field(
        default_factory=lambda: os.environ.get("DATABASE_URL"), repr=False
    )
    temporal_address: str = field(
        default_factory=lambda: os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233")
    )
    temporal_namespace: str = field(
        default_factory=lambda: os.environ.get("TEMPORAL_NAMESPACE", "default")
    )
    # TLS to the frontend: a client certificate and key (mTLS) and/or the server's CA
    # (PEM files); an API key (Temporal Cloud) is sent as a Bearer token, over TLS.
    temporal_tls_cert: str | None = field(default_factory=lambda: _env("TEMPORAL_TLS_CERT"))
    temporal_tls_key: str | None = field(default_factory=lambda: _env("TEMPORAL_TLS_KEY"))
    temporal_tls_ca: str | None = field(default_factory=lambda: _env("TEMPORAL_TLS_CA"))
    temporal_tls_server_name: str | None = field(
        default_factory=lambda: _env("TEMPORAL_TLS_SERVER_NAME")
    )
    temporal_api_key: str | None = field(default_factory=lambda: _env("TEMPORAL_API_KEY"),
                                         repr=False)
    queue_prefix: str = field(default_factory=lambda: os.environ.get("AE_QUEUE_PREFIX", "ae"))
    # Task queue names; unset, `<prefix>-orchestration`, `<prefix>-cpu`, `<prefix>-gpu`.
    orchestration_queue_override: str | None = field(
        default_factory=lambda: _env("AE_ORCHESTRATION_QUEUE")
    )
    cpu_queue_override: str | None = field(default_factory=lambda: _env("AE_CPU_QUEUE"))
    gpu_queue_override: str | None = field(default_factory=lambda: _env("AE_GPU_QUEUE"))
    # Activities one worker process runs at once, per queue (cpu: AE_CPU_SLOTS below).
    orchestration_slots: int = field(
        default_factory=lambda: _env_int("AE_ORCHESTRATION_SLOTS", 50)
    )
    gpu_slots: int = field(default_factory=lambda: _env_int("AE_GPU_SLOTS", 1))
    # Blob store: a directory (default $AE_DATA_DIR/blobs) or s3://bucket/prefix.
    blob_url_override: str | None = field(default_factory=lambda: _env("AE_BLOB_URL"))
    s3_endpoint_url: str | None = field(default_factory=lambda: _env("AE_S3_ENDPOINT_URL"))
    s3_region: str | None = field(default_factory=lambda: _env("AE_S3_REGION"))
    max_upload_bytes: int = field(
        default_factory=lambda: _env_int("AE_MAX_UPLOAD_BYTES", 100 * 1024 * 1024)
    )
    lift_timeout_s: int = field(default_factory=lambda: _env_int("AE_LIFT_TIMEOUT_S", 1800))
    lift_memory_mb: int = field(default_factory=lambda: _env_int("AE_LIFT_MEMORY_MB", 8192))
    # The unpack child (sandbox/): wall-clock and address-space limits.
    unpack_timeout_s: int = field(default_factory=lambda: _env_int("AE_UNPACK_TIMEOUT_S", 300))
    unpack_memory_mb: int = field(
        default_factory=lambda: _env_int("AE_UNPACK_MEMORY_MB", 2048)
    )
    cpu_slots: int = field(default_factory=lambda: _env_int("AE_CPU_SLOTS", os.cpu_count() or 1))
    graceful_shutdown_s: int = field(
        default_factory=lambda: _env_int("AE_GRACEFUL_SHUTDOWN_S", 10)
    )
    # Request bodies of the JSON operations (413 above): Update Predictions, Update
    # Explanations. Submit Sample's cap is max_upload_bytes.
    max_predictions_body_bytes: int = field(
        default_factory=lambda: _env_int("AE_MAX_PREDICTIONS_BODY_BYTES", 16 * 1024 * 1024)
    )
    max_explanation_body_bytes: int = field(
        default_factory=lambda: _env_int("AE_MAX_EXPLANATION_BODY_BYTES", 4 * 1024 * 1024)
    )
    # Slow clients (api/server.py): the request line and headers must arrive within
    # header_timeout_s; a body gets body_timeout_s plus one second per body_min_rate
    # bytes received; at most max_connections connections are served at once (503 above).
    header_timeout_s: int = field(default_factory=lambda: _env_int("AE_HEADER_TIMEOUT_S", 10))
    body_timeout_s: int = field(default_factory=lambda: _env_int("AE_BODY_TIMEOUT_S", 30))
    body_min_rate: int = field(default_factory=lambda: _env_int("AE_BODY_MIN_RATE", 1024))
    max_connections: int = field(default_factory=lambda: _env_int("AE_MAX_CONNECTIONS", 512))
    # Prometheus: this process's scrape endpoint (0 = none); make up gives each its own.
    metrics_port: int = field(default_factory=lambda: _env_int("AE_METRICS_PORT", 0))
    metrics_host: str = field(
        default_factory=lambda: os.environ.get("AE_METRICS_HOST", "127.0.0.1")
    )
    # Batch reanalysis: analyses started per workflow run before it continues as new.
    batch_children_per_run: int = field(
        default_factory=lambda: _env_int("AE_BATCH_CHILDREN_PER_RUN", 200)
    )
    # API authentication: "enabled" (default) or "disabled" (local development only).
    auth: str = field(default_factory=lambda: os.environ.get("AE_AUTH", "enabled").strip())
    # Secrets: never in a repr (nor in a log line: common/logs.py masks them there too).
    api_keys: tuple[str, ...] = field(default_factory=lambda: _env_keys("AE_API_KEYS"),
                                      repr=False)
    internal_api_keys: tuple[str, ...] = field(
        default_factory=lambda: _env_keys("AE_INTERNAL_API_KEYS"), repr=False
    )

    @property
    def blob_dir(self) -> Path:
        return Path(os.environ.get("AE_BLOB_DIR", self.data_dir / "blobs"))

    @property
    def blob_url(self) -> str:
        return self.blob_url_override or str(self.blob_dir)

    @property
    def scratch_dir(self) -> Path:
        """This machine's temporary files (incoming uploads, lifts, copies from S3)."""
        return Path(os.environ.get("AE_SCRATCH_DIR", self.data_dir / "scratch"))

    @property
    def database_url(self) -> str:
        if self.database_url_override:
            return self.database_url_override
        return f"sqlite+aiosqlite:///{self.data_dir / 'attribution.db'}"

    @property
    def orchestration_queue(self) -> str:
        return self.orchestration_queue_override or f"{self.queue_prefix}-orchestration"

    @property
    def cpu_queue(self) -> str:
        return self.cpu_queue_override or f"{self.queue_prefix}-cpu"

    @property
    def gpu_queue(self) -> str:
        return self.gpu_queue_override or f"{self.queue_prefix}-gpu"


def load_settings() -> Settings:
    return Settings()
