"""Explain stage: a Markdown account of the attribution, written from the results alone.

Every name that comes from a sample or a user (function and archive member names,
reference function names, family and version labels, skip reasons) goes through `code`
or `escape`, so that no such name can add Markdown (links, images, emphasis, headings,
table cells) or raw HTML to the explanation.
"""

from __future__ import annotations

import asyncio
import re
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
        blobs = self.deps.blobs  # S3 calls block: in a thread, off the event loop
        results = await asyncio.to_thread(blobs.read_json, request.results_sha256)
        text = render_explanation(request.sha256, results)
        return ExplainResult(
            explanation_sha256=await asyncio.to_thread(blobs.put_bytes, text.encode()))


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# Characters Markdown (CommonMark + GFM tables) gives a meaning wherever they stand:
# emphasis, code, links and images, raw HTML and entities, table cells, strikethrough,
# headings. Backslash-escaped, each stands for itself. Line endings end a table row or
# start a new block: they become spaces.
_INLINE = re.compile(r"([\\`*_\[\]<>!&|~#])")
_LINE_BREAK = re.compile(r"\r\n|[\r\n\u2028\u2029]")


def escape(value: object) -> str:
    """Text that Markdown shows exactly as given (line breaks as spaces): the characters
    of _INLINE backslash-escaped, and a list marker at its start ("-", "+", "=", "1." or
    "1)") too, should the text ever begin a line."""
    text = _INLINE.sub(r"\\\1", _LINE_BREAK.sub(" ", str(value)))
    text = re.sub(r"^([-+=])", r"\\\1", text)
    return re.sub(r"^(\d+)([.)])", r"\1\\\2", text)


def code(value: object, in_table: bool = False) -> str:
    """A code span that shows the text exactly: fenced by one backtick more than the
    longest run of backticks inside it, padded with spaces when it begins or ends with
    a backtick or a space (CommonMark strips one space from each side). Inside a table
    cell `|` is escaped, which GFM undoes inside code spans."""
    text = _LINE_BREAK.sub(" ", str(value))
    if not text:
        return "(empty)"
    if in_table:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    if text[0] in "` " or text[-1] in "` ":
        text = f" {text} "
    return f"{fence}{text}{fence}"


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
        others = [escape(f) for f in present if f != verdict]
        also = f"; also present: {', '.join(others)}" if others else ""
        lines.append(
            f"**Verdict: {escape(verdict)}** (probability {results.get('confidence', '?')}{also}), "
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
                f"| {escape(name)} | {escape(info.get('status', ''))} | "
                f"{info.get('probability', '')} | "
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
            where = escape(m.get("address", "?"))
            if m.get("name"):
                where += f" ({code(m['name'], in_table=True)})"
            lines.append(
                f"| {where} | {m.get('blocks', '')} | {escape(m.get('family', ''))} | "
                f"{code(m.get('reference_function', ''), in_table=True)} | "
                f"{escape(m.get('reference_build', ''))} | "
                f"{m.get('similarity', '')} |"
            )
    if children:
        lines += ["", "## Binaries analysed", ""]
        for child_sha, info in children.items():
            lines.append(
                f"- {code(info.get('name', child_sha))}: {escape(info.get('format', '?'))} "
                f"{escape(info.get('arch', '?'))}, {info.get('functions', '0')} functions "
                f"(sha256 `{child_sha}`)"
            )
    skipped = _as_dict(results.get("skipped"))
    if skipped:
        lines += ["", "## Not analysed", ""]
        for name, info in list(skipped.items())[:20]:
            lines.append(f"- {code(name)}: {escape(_as_dict(info).get('reason', 'skipped'))}")
    lines.append("")
    return "\n".join(lines)
