"""What "current" means for a prediction, seen from the API: the model the workers serve
(festive/served.py: their published card, else the installed one) and the index
version of its shipped index plus the references users added (from the database). A
stored prediction whose model_version differs is analysed again."""

from __future__ import annotations

from typing import Any

from api.state import ApiState
from festive.card import analysis_version, index_version


async def served_card(state: ApiState) -> dict[str, Any]:
    return await state.served.get()


async def current_index_version(state: ApiState) -> str:
    card = await served_card(state)
    active = await state.store.active_references(card["weights_sha256"])
    return index_version(card["index_version"], [(r.sha256, r.family, r.version) for r in active])


async def current_analysis_version(state: ApiState) -> str:
    return analysis_version(await served_card(state), await current_index_version(state))
