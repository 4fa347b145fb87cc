"""The API takes the model version from what the workers publish (festive/served.py), not
from its own copy of the weights: an API process whose installed card is older than the
workers' answers with the workers' version, and analyses against it."""

from __future__ import annotations

from pathlib import Path

import httpx

from common.config import Settings
from common.contracts import MODEL_NAME
from festive import served
from festive.card import analysis_version, model_card
from store.blobs import open_blobs
from tests.live_api import live_api

KEY = "served-model-key"


def _store(data_dir: Path):  # noqa: ANN202 - a BlobStore
    settings = Settings(data_dir=data_dir)
    return open_blobs(str(data_dir / "blobs"), data_dir / "scratch"), settings.gpu_queue


def test_a_published_card_is_read_back_and_per_deployment(tmp_path: Path) -> None:
    blobs, queue = _store(tmp_path)
    assert served.read(blobs, queue) is None
    newer = {**model_card(), "version": "9.9.9", "weights_sha256": "f" * 64}
    served.publish(blobs, queue, newer)
    record = served.read(blobs, queue)
    assert record is not None and record["version"] == "9.9.9"
    assert record["weights_sha256"] == "f" * 64
    assert served.read(blobs, queue + "-other") is None  # another deployment's queue
    served.publish(blobs, queue)  # the worker started last wins
    assert served.read(blobs, queue)["version"] == model_card()["version"]


def test_the_api_reports_the_version_the_workers_serve(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = {"AE_AUTH": "enabled", "AE_API_KEYS": KEY, "AE_INTERNAL_API_KEYS": KEY + "-internal"}
    headers = {"Authorization": f"Bearer {KEY}"}
    with live_api(data, **env) as port:
        url = f"http://127.0.0.1:{port}/versions"
        before = httpx.get(url, headers=headers, timeout=30).json()[MODEL_NAME]
        assert before["source"] == "installed"
        assert before["version"] == model_card()["version"]
    blobs, queue = _store(data)
    card = {**model_card(), "version": "9.9.9", "index_version": "0123456789abcdef",
            "weights_sha256": "e" * 64}
    served.publish(blobs, queue, card)
    with live_api(data, **env) as port:
        after = httpx.get(f"http://127.0.0.1:{port}/versions", headers=headers,
                          timeout=30).json()[MODEL_NAME]
    assert after["source"] == "workers"
    assert after["version"] == "9.9.9"
    assert after["weights_sha256"] == "e" * 64
    assert after["analysis_version"] == analysis_version(card, "0123456789abcdef")
