"""Explain stage: a Markdown account of the attribution, written from the results alone."""

from __future__ import annotations

from typing import Any

from temporalio import activity

from activities.deps import Deps
from common.contracts import MODEL_NAME, ExplainRequest, ExplainResult

BEST_MATCHES_SHOWN = 10


class Explain:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn(name="explain_results")
    async def explain_results(self, request: ExplainRequest) -> ExplainResult:
        results = self.deps.blobs.read_json(request.results_sha256)
        text = render_explanation(request.sha256, results)
        return ExplainResult(explanation_sha256=self.deps.blobs.put_bytes(text.encode()))


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def render_explanation(sha256: str, results: dict[str, Any]) -> str:
    families = _as_dict(results.get("families"))
    matches = _as_dict(results.get("matches"))
    children = _as_dict(results.get("children"))
    model = f"{results.get('model', MODEL_NAME)} {results.get('model_version', '')}"
    lines = [f"# Attribution of `{sha256}`", ""]
    verdict = results.get("verdict", "unknown")
    considered = results.get("functions_considered", "0")
    total = results.get("functions_total", "0")
    present = str(results.get("families_present", "")).split()
    if families and verdict != "unknown":
        others = [f for f in present if f != verdict]
        also = f"; also present: {', '.join(others)}" if others else ""
        lines.append(
            f"**Verdict: {verdict}** (probability {results.get('confidence', '?')}{also}), "
            f"by {model.strip()}."
        )
    elif families:
        lines.append(
            f"**No known code family found** by {model.strip()}: a few functions resemble "
            "reference functions (listed below), but no family has enough of them to be "
            "judged present. Treat them as weak evidence."
        )
    else:
        lines.append(
            f"**No known code family found** by {model.strip()}: none of the {considered} "
            "functions large enough to judge matched a reference function closely enough."
        )
    lines += [
        "",
        f"{total} functions were recovered in {len(children)} binar"
        f"{'y' if len(children) == 1 else 'ies'}; {considered} are large enough to judge "
        "(at least 5 basic blocks, not compiler or runtime scaffolding) and "
        f"{results.get('functions_matched', '0')} of them match a reference function.",
    ]
    if families:
        lines += ["", "## Families", "",
                  "Each family is judged on its own evidence: matches one-to-one with its "
                  "reference functions, weighted by similarity and by how rare the code is "
                  "across families.", "",
                  "| family | status | probability | matched functions | share of judged "
                  "| mean similarity | best |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        ranked = sorted(families.items(),
                        key=lambda kv: -float(_as_dict(kv[1]).get("probability", 0) or 0))
        for name, info in ranked:
            lines.append(
                f"| {name} | {info.get('status', '')} | {info.get('probability', '')} | "
                f"{info.get('functions_matched', '0')} | "
                f"{info.get('share_of_considered', '')} | {info.get('mean_similarity', '')} | "
                f"{info.get('best_similarity', '')} |"
            )
    if matches:
        best = sorted(matches.values(), key=lambda m: -float(m.get("similarity", 0) or 0))
        lines += ["", f"## Best matching functions (top {min(BEST_MATCHES_SHOWN, len(best))} "
                  f"of {len(matches)})", "",
                  "| function | blocks | family | reference function | reference build "
                  "| similarity |",
                  "|---|---:|---|---|---|---:|"]
        for m in best[:BEST_MATCHES_SHOWN]:
            where = m.get("address", "?") + (f" ({m['name']})" if m.get("name") else "")
            lines.append(
                f"| {where} | {m.get('blocks', '')} | {m.get('family', '')} | "
                f"{m.get('reference_function', '')} | {m.get('reference_build', '')} | "
                f"{m.get('similarity', '')} |"
            )
    if children:
        lines += ["", "## Binaries analysed", ""]
        for child_sha, info in children.items():
            lines.append(
                f"- `{info.get('name', child_sha)}`: {info.get('format', '?')} "
                f"{info.get('arch', '?')}, {info.get('functions', '0')} functions "
                f"(sha256 `{child_sha}`)"
            )
    skipped = _as_dict(results.get("skipped"))
    if skipped:
        lines += ["", "## Not analysed", ""]
        for name, info in list(skipped.items())[:20]:
            lines.append(f"- `{name}`: {_as_dict(info).get('reason', 'skipped')}")
    lines.append("")
    return "\n".join(lines)
