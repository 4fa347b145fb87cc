"""Settings are checked when a process starts: a bad value stops the API and the worker
with a message naming the variable and the form expected, and secrets (API keys, the
password in DATABASE_URL) appear in no repr, log line or error message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from common.config import PROJECT_ROOT, Settings, SettingsError
from tests.live_api import live_api

PASSWORD = "hunter2-db-password"
EXTERNAL, INTERNAL = "settings-external-key-5b1e", "settings-internal-key-77c0"

# (variable, bad value, words the message must hold)
BAD_VALUES = [
    ("AE_MAX_UPLOAD_BYTES", "abc", "not a whole number"),
    ("AE_CPU_SLOTS", "-2", "expected at least 1"),
    ("AE_ORCHESTRATION_SLOTS", "0", "expected at least 1"),
    ("AE_METRICS_PORT", "70000", "at most 65535"),
    ("AE_RATE_LIMIT", "fast", "not a number"),
    ("AE_UPLOAD_QUOTA", "1GB", "not a whole number"),
    ("AE_AUTH", "off", "expected 'enabled' or 'disabled'"),
    ("TEMPORAL_ADDRESS", "localhost", "expected HOST:PORT"),
    ("AE_BLOB_URL", "ftp://host/blobs", "expected s3://BUCKET"),
    ("DATABASE_URL", f"postgresql+asyncpg://ae:{PASSWORD}@db:port/ae", "not a database URL"),
    ("DATABASE_URL", f"mysql://ae:{PASSWORD}@db/ae", "names the driver 'mysql'"),
    ("DATABASE_URL", "not a url at all", "expected sqlite+aiosqlite:///PATH"),
    ("AE_EMBED_PRECISION", "fp16", "expected one of float32, bfloat16"),
    ("AE_STATUS_DESCRIBES", "0", "expected at least 1"),
]


def start(module: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AE_")}
    environment.pop("DATABASE_URL", None)
    environment.update(AE_DATA_DIR=str(tmp_path), AE_API_KEYS=EXTERNAL,
                       AE_INTERNAL_API_KEYS=INTERNAL, API_PORT="1", **env)
    return subprocess.run([sys.executable, "-m", *module], cwd=PROJECT_ROOT, env=environment,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize(("variable", "value", "words"), BAD_VALUES)
def test_a_bad_value_is_named_and_never_echoes_a_secret(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        Settings()
    message = str(raised.value)
    assert variable in message and words in message, message
    assert PASSWORD not in message


@pytest.mark.parametrize(("variable", "value", "words"), [BAD_VALUES[0], BAD_VALUES[9]])
def test_the_api_stops_at_start(tmp_path: Path, variable: str, value: str, words: str) -> None:
    done = start(["api.server"], tmp_path, **{variable: value})
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"api: configuration error: {variable}" in done.stderr and words in done.stderr
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr + done.stdout


@pytest.mark.parametrize(("variable", "value", "words"), [BAD_VALUES[1], BAD_VALUES[10]])
def test_the_worker_stops_at_start(tmp_path: Path, variable: str, value: str,
                                   words: str) -> None:
    done = start(["worker", "--role", "cpu"], tmp_path, **{variable: value})
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"worker: configuration error: {variable}" in done.stderr and words in done.stderr
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr + done.stdout


def test_secrets_stay_out_of_reprs() -> None:
    settings = Settings(api_keys=(EXTERNAL,), internal_api_keys=(INTERNAL,),
                        temporal_api_key="temporal-cloud-secret",
                        database_url_override=f"postgresql+asyncpg://ae:{PASSWORD}@db/ae")
    shown = " ".join([repr(settings), str(settings), repr(settings.api_keys),
                      str(settings.internal_api_keys), repr(settings.temporal_api_key)])
    for secret in (EXTERNAL, INTERNAL, "temporal-cloud-secret", PASSWORD):
        assert secret not in shown, shown
    assert settings.api_keys[0].get_secret_value() == EXTERNAL


def test_secrets_stay_out_of_the_api_log(tmp_path: Path) -> None:
    """A live API used with both keys (and a wrong one): its log names neither key."""
    data = tmp_path / "data"
    with live_api(data, AE_API_KEYS=EXTERNAL, AE_INTERNAL_API_KEYS=INTERNAL,
                  AE_LOG_FORMAT="json") as port:
        base = f"http://127.0.0.1:{port}"
        for key in (EXTERNAL, INTERNAL, "wrong-key"):
            headers = {"Authorization": f"Bearer {key}"}
            httpx.get(f"{base}/internal/predictions/{'a' * 64}", headers=headers)
            httpx.get(f"{base}/predictions/{'b' * 64}/status", headers=headers)
    log = "".join(p.read_text() for p in data.glob("api-*.log"))
    assert "/internal/predictions/" in log  # the requests were logged
    assert EXTERNAL not in log and INTERNAL not in log
