"""Settings from the environment, with embedded single-machine defaults."""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from festive.card import DEFAULT_PRECISION, PRECISIONS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
API_VERSION = "2.4.8"


class SettingsError(ValueError):
    """A setting's value is not of the expected form. The message names the variable and
    the form it takes; it never repeats a secret (an API key, a password in a URL)."""


def _env_int(name: str, default: int) -> int:
    """A whole number; unset or empty means the default."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw[:40]!r} is not a whole number "
                            f"(expected digits, e.g. {name}={default})") from None


def _env_float(name: str, default: float) -> float:
    """A decimal number; unset or empty means the default."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise SettingsError(f"{name}={raw[:40]!r} is not a number "
                            f"(expected a decimal such as {name}=2.5)")
    return value


def _env(name: str) -> str | None:
    """A variable's value, None when unset or empty."""
    return os.environ.get(name) or None


def _env_secret(name: str) -> SecretStr | None:
    value = _env(name)
    return SecretStr(value) if value else None


def _env_keys(name: str) -> tuple[SecretStr, ...]:
    """A comma-separated list of API keys; blanks around and between commas are ignored."""
    return tuple(SecretStr(key.strip()) for key in os.environ.get(name, "").split(",")
                 if key.strip())


def _secret(value: SecretStr | str | None) -> SecretStr | None:
    if value is None or isinstance(value, SecretStr):
        return value
    return SecretStr(value)


# Whole-number settings and their bounds: (field, variable, least, greatest).
_BOUNDS: tuple[tuple[str, str, float, float], ...] = (
    ("orchestration_slots", "AE_ORCHESTRATION_SLOTS", 1, 10_000),
    ("gpu_slots", "AE_GPU_SLOTS", 1, 1_000),
    ("cpu_slots", "AE_CPU_SLOTS", 1, 1_000),
    ("warm_children", "AE_WARM_CHILDREN", 0, 64),
    ("worker_nice", "AE_WORKER_NICE", 0, 19),
    ("max_upload_bytes", "AE_MAX_UPLOAD_BYTES", 1, math.inf),
    ("lift_timeout_s", "AE_LIFT_TIMEOUT_S", 1, math.inf),
    ("lift_memory_mb", "AE_LIFT_MEMORY_MB", 64, math.inf),
    ("graceful_shutdown_s", "AE_GRACEFUL_SHUTDOWN_S", 0, math.inf),
    ("max_predictions_body_bytes", "AE_MAX_PREDICTIONS_BODY_BYTES", 1, math.inf),
    ("max_explanation_body_bytes", "AE_MAX_EXPLANATION_BODY_BYTES", 1, math.inf),
    ("header_timeout_s", "AE_HEADER_TIMEOUT_S", 1, math.inf),
    ("body_timeout_s", "AE_BODY_TIMEOUT_S", 1, math.inf),
    ("body_min_rate", "AE_BODY_MIN_RATE", 1, math.inf),
    ("max_connections", "AE_MAX_CONNECTIONS", 1, math.inf),
    ("metrics_port", "AE_METRICS_PORT", 0, 65535),
    ("batch_children_per_run", "AE_BATCH_CHILDREN_PER_RUN", 1, math.inf),
    ("rate_limit", "AE_RATE_LIMIT", 0, math.inf),
    ("status_refresh_s", "AE_STATUS_REFRESH_S", 0, 3600),
    ("status_wait_s", "AE_STATUS_WAIT_S", 0.001, 60),
    ("status_describes", "AE_STATUS_DESCRIBES", 1, 10_000),
    ("rate_burst", "AE_RATE_BURST", 0, math.inf),
    ("upload_quota_bytes", "AE_UPLOAD_QUOTA", 0, math.inf),
    ("upload_quota_window_s", "AE_UPLOAD_QUOTA_WINDOW_S", 1, math.inf),
)
AUTH_MODES = ("enabled", "disabled")
DATABASE_FORMS = {"sqlite+aiosqlite": "sqlite+aiosqlite:///PATH",
                  "postgresql+asyncpg": "postgresql+asyncpg://USER:PASSWORD@HOST[:PORT]/DB"}
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


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
    temporal_api_key: SecretStr | None = field(
        default_factory=lambda: _env_secret("TEMPORAL_API_KEY"), repr=False
    )
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
    # Unpack and lift children each cpu worker keeps started ahead of their job
    # (sandbox/warm.py): Python and angr are imported while the worker waits. 0: none.
    warm_children: int = field(default_factory=lambda: _env_int("AE_WARM_CHILDREN", 1))
    # How much a worker serving the cpu or gpu queue lowers its CPU priority (nice), and
    # with it every child it starts: on a shared machine the API and the workflows'
    # light steps are answered first, and the lifts and embeddings take what is left.
    worker_nice: int = field(default_factory=lambda: _env_int("AE_WORKER_NICE", 10))
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
    # Get Status of an open run: each API process asks Temporal again once its view of a
    # run is this many seconds old (api/running.py); 0: on every request.
    status_refresh_s: float = field(
        default_factory=lambda: _env_float("AE_STATUS_REFRESH_S", 1.0)
    )
    # ... and waits at most this long for Temporal's answer before it answers the view it
    # has (an older one, or the database row's).
    status_wait_s: float = field(
        default_factory=lambda: _env_float("AE_STATUS_WAIT_S", 0.025)
    )
    # ... and sends at most this many describe() calls at once: a client that starts
    # polling many runs would otherwise send a burst of them, and its share of the
    # Temporal server and of the API process slowed every request of that second. One
    # at a time answered 100 runs polled at 500/s within 50 ms (p99) where 8 did not
    # (BENCHMARKS.md, Get Status round 7); raise it where Temporal has cores of its own
    # and many more runs are polled (each run's view is refreshed within
    # AE_STATUS_REFRESH_S only while describes keep up).
    status_describes: int = field(
        default_factory=lambda: _env_int("AE_STATUS_DESCRIBES", 1)
    )
    # How the gpu worker embeds (festive.card.PRECISIONS): "float32" as trained, or
    # "bfloat16" autocast (faster where the chip has bfloat16 units; bench/bf16.md).
    embed_precision: str = field(
        default_factory=lambda: os.environ.get("AE_EMBED_PRECISION", DEFAULT_PRECISION).strip()
    )
    # API authentication: "enabled" (default) or "disabled" (local development only).
    auth: str = field(default_factory=lambda: os.environ.get("AE_AUTH", "enabled").strip())
    # Secrets: never in a repr (nor in a log line: common/logs.py masks them there too).
    # Strings given here (tests) become SecretStr too (__post_init__).
    api_keys: tuple[SecretStr, ...] = field(default_factory=lambda: _env_keys("AE_API_KEYS"),
                                            repr=False)
    internal_api_keys: tuple[SecretStr, ...] = field(
        default_factory=lambda: _env_keys("AE_INTERNAL_API_KEYS"), repr=False
    )
    # Quotas per API key (api/quotas.py): requests per second with a burst (this
    # process's token bucket), and upload bytes per window (shared, in the database).
    # 0 turns a limit off; a burst of 0 means twice the rate (at least 1).
    rate_limit: float = field(default_factory=lambda: _env_float("AE_RATE_LIMIT", 0.0))
    rate_burst: int = field(default_factory=lambda: _env_int("AE_RATE_BURST", 0))
    upload_quota_bytes: int = field(default_factory=lambda: _env_int("AE_UPLOAD_QUOTA", 0))
    upload_quota_window_s: int = field(
        default_factory=lambda: _env_int("AE_UPLOAD_QUOTA_WINDOW_S", 86_400)
    )

    def __post_init__(self) -> None:
        """Every value checked once, at start: a bad one stops the process with a message
        naming the variable and the form expected (SettingsError)."""
        object.__setattr__(self, "api_keys", tuple(_secret(k) for k in self.api_keys))
        object.__setattr__(self, "internal_api_keys",
                           tuple(_secret(k) for k in self.internal_api_keys))
        object.__setattr__(self, "temporal_api_key", _secret(self.temporal_api_key))
        for name, variable, least, greatest in _BOUNDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingsError(f"{variable} must be a number, not {type(value).__name__}")
            if not least <= value <= greatest:
                upper = "" if greatest == math.inf else f" and at most {greatest:g}"
                raise SettingsError(f"{variable}={value} is out of range: expected at least "
                                    f"{least:g}{upper}")
        if self.embed_precision not in PRECISIONS:
            raise SettingsError(f"AE_EMBED_PRECISION={self.embed_precision[:40]!r} is not "
                                f"valid: expected one of {', '.join(PRECISIONS)}")
        if self.auth not in AUTH_MODES:
            raise SettingsError(f"AE_AUTH={self.auth[:40]!r} is not valid: expected "
                                f"'{AUTH_MODES[0]}' or '{AUTH_MODES[1]}'")
        if not _HOST_PORT.match(self.temporal_address):
            raise SettingsError(f"TEMPORAL_ADDRESS={self.temporal_address[:80]!r} is not valid: "
                                "expected HOST:PORT, e.g. 127.0.0.1:7233")
        for variable, path in (("TEMPORAL_TLS_CERT", self.temporal_tls_cert),
                               ("TEMPORAL_TLS_KEY", self.temporal_tls_key),
                               ("TEMPORAL_TLS_CA", self.temporal_tls_ca)):
            if path and not Path(path).is_file():
                raise SettingsError(f"{variable} names no readable file: expected the path "
                                    "of a PEM file")
        if self.blob_url_override and "://" in self.blob_url_override and not (
            self.blob_url_override.startswith(("s3://", "file://"))
        ):
            raise SettingsError("AE_BLOB_URL is not valid: expected s3://BUCKET[/PREFIX], "
                                "file:///PATH or a directory path")
        if self.database_url_override:
            _check_database_url(self.database_url_override)

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


def _check_database_url(url: str) -> None:
    """A URL SQLAlchemy can parse, with a driver the store supports. The URL is never
    repeated in the message: it may hold a password."""
    forms = " or ".join(DATABASE_FORMS.values())
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise SettingsError(f"DATABASE_URL is not a database URL: expected {forms} (the "
                            "value is not shown: it may hold a password)") from None
    if parsed.drivername not in DATABASE_FORMS:
        raise SettingsError(f"DATABASE_URL names the driver {parsed.drivername!r}: expected "
                            f"{forms}")
    if parsed.drivername.startswith("postgresql") and not parsed.database:
        raise SettingsError("DATABASE_URL names no database: expected "
                            f"{DATABASE_FORMS['postgresql+asyncpg']}")


def load_settings() -> Settings:
    """The settings of this process, from the environment; SettingsError when a value is
    not of its expected form."""
    return Settings()


def load_or_exit(process: str) -> Settings:
    """load_settings for a process's start: a bad value ends it with exit status 2 and one
    line on stderr naming the variable and the expected form."""
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"{process}: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
