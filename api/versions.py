"""What "current" means for a prediction, seen from the API: the installed model (its
card) and the index version of the shipped index plus the references users added (from
the database). A stored prediction whose model_version differs is analysed again."""

from __future__ import annotations

from festive.card import analysis_version, index_version, model_card, read_card
from store.db import PredictionStore


async def current_index_version(store: PredictionStore) -> str:
    card = model_card()
    active = await store.active_references(card["weights_sha256"])
    return index_version(card["index_version"], [(r.sha256, r.family, r.version) for r in active])


async def current_analysis_version(store: PredictionStore) -> str:
    return analysis_version(read_card(), await current_index_version(store))
