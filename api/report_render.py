"""The HTML report of one analysis: what the page shows, built from stored data, and the
page itself (Jinja2, autoescaping on: every name from a sample is text, never markup).

Pure functions, no I/O: api/report.py reads the row, the lifts and the user references
and hands them over. The page is one self-contained document (inline CSS, the chart as
inline SVG, no script): it works offline and is saved as is by the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, PackageLoader
from markdown_it import MarkdownIt
from markupsafe import Markup

# The best matches shown side by side: those the worker attributes to blocks, as
# festive/occlusion.py's MATCHES and MAX_BLOCKS say (not imported: numpy stays out of
# the API; tests/test_occlusion.py checks they agree).
MATCHES_DETAILED = 10
OCCLUDED_MAX_BLOCKS = 256
OCCLUDED_GROUPS = 32
BLOCKS_SHOWN = 300  # blocks of one function listed on the page
MARKED_BLOCKS = 3  # at most this many blocks are marked as having driven the similarity
MARK_MIN_DROP = 0.01  # ... and only when the similarity falls at least this much without it

# The page runs no script and loads nothing: the header tells the browser so too.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_env = Environment(loader=PackageLoader("api", "templates"), autoescape=True,
                   trim_blocks=True, lstrip_blocks=True)
# CommonMark plus tables, raw HTML off (shown as text); markdown-it refuses javascript:,
# vbscript:, file: and data: (but images) links.
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass
class Block:
    addr: str
    statements: list[str]
    drop: float | None = None  # similarity lost without the block (None: not measured)
    shade: float = 0.0  # 0..1, the drop relative to the largest one
    marked: bool = False


@dataclass
class Side:
    """One side of a match: its labels, and its code when there is code to show."""

    title: str
    labels: list[tuple[str, str]]
    blocks: list[Block] = field(default_factory=list)
    blocks_total: int = 0
    note: str = ""


@dataclass
class MatchDetail:
    rank: int
    key: str
    match: dict[str, str]
    sample: Side
    reference: Side
    attributed: bool
    open: bool


@dataclass
class ReferenceCode:
    """What api/report.py found for a match's reference function: a user reference's
    lifted function, or why there is none to show."""

    function: dict[str, Any] | None
    labels: list[tuple[str, str]]
    note: str


@dataclass
class Bar:
    name: str
    status: str
    probability: str
    score: str
    matched: str
    y: int
    width: float


@dataclass
class Chart:
    width: int
    height: int
    label_width: int
    bar_width: int
    bars: list[Bar]
    ticks: list[tuple[float, str]]


def ranked_matches(results: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """Every match, best first (by similarity, stored order among equals)."""
    matches = [(k, _dict(v)) for k, v in _dict(results.get("matches")).items()]
    return sorted(matches, key=lambda kv: -_float(kv[1].get("similarity")))


def family_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    families = [(k, _dict(v)) for k, v in _dict(results.get("families")).items()]
    return sorted(families, key=lambda kv: -_float(kv[1].get("probability")))


def chart(families: list[tuple[str, dict[str, str]]]) -> Chart:
    """Horizontal bars: each family's probability of being present, 0..1."""
    label_width, bar_width, row = 150, 420, 26
    bars = [
        Bar(name, info.get("status", ""), info.get("probability", ""), info.get("score", ""),
            info.get("functions_matched", ""), 24 + i * row,
            max(1.0, bar_width * min(1.0, max(0.0, _float(info.get("probability"))))))
        for i, (name, info) in enumerate(families)
    ]
    ticks = [(label_width + bar_width * t, f"{t:.2f}") for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return Chart(label_width + bar_width + 230, 24 + row * len(bars) + 28, label_width,
                 bar_width, bars, ticks)


def find_function(lift: dict[str, Any] | None, address: str = "",
                  name: str = "") -> dict[str, Any] | None:
    """The lifted function at `address` (or, failing that, named `name`)."""
    if not lift:
        return None
    functions = lift.get("functions", [])
    for func in functions:
        if address and func.get("addr") == address:
            return func
    for func in functions:
        if name and (func.get("name") == name or func.get("addr") == name):
            return func
    return None


def blocks_of(func: dict[str, Any], drops: dict[str, str] | None = None) -> list[Block]:
    """The function's blocks (at most BLOCKS_SHOWN), with the occlusion drops when given:
    the MARKED_BLOCKS largest positive ones (at least MARK_MIN_DROP) are marked."""
    measured = {addr: _float(v) for addr, v in (drops or {}).items()}
    top = max([d for d in measured.values() if d > 0], default=0.0)
    marked = {addr for addr, d in sorted(measured.items(), key=lambda kv: -kv[1])
              [:MARKED_BLOCKS] if d >= MARK_MIN_DROP}
    out = []
    for block in func.get("blocks", [])[:BLOCKS_SHOWN]:
        addr = str(block.get("addr", ""))
        drop = measured.get(addr)
        out.append(Block(addr, [str(s) for s in block.get("vex", [])], drop,
                         max(0.0, drop / top) if drop is not None and top > 0 else 0.0,
                         addr in marked))
    return out


def _sample_side(match: dict[str, str], child_name: str, func: dict[str, Any] | None,
                 drops: dict[str, str] | None) -> Side:
    labels = [("binary", child_name), ("address", match.get("address", "")),
              ("name", match.get("name", "") or "(stripped)"), ("blocks", match.get("blocks", ""))]
    if func is None:
        return Side("Sample function", labels, note=(
            "The lift of this binary is no longer in the blob store (it is kept as a cache), "
            "so its code cannot be shown."))
    note = "" if drops else (
        "No block attribution for this match: it is measured for the "
        f"{MATCHES_DETAILED} best matches of functions of at most {OCCLUDED_MAX_BLOCKS} "
        "blocks.")
    return Side("Sample function", labels, blocks_of(func, drops), len(func.get("blocks", [])),
                note)


def _reference_side(match: dict[str, str], found: ReferenceCode) -> Side:
    labels = [("family", match.get("family", "")), ("version", match.get("reference_version", "")),
              ("build", match.get("reference_build", "")),
              ("function", match.get("reference_function", ""))] + found.labels
    if found.function is None:
        return Side("Reference function", labels, note=found.note)
    return Side("Reference function", labels, blocks_of(found.function),
                len(found.function.get("blocks", [])), found.note)


def detailed_ranks(count: int, chosen: int | None) -> list[int]:
    """The matches shown side by side (1-based ranks): the best MATCHES_DETAILED, and the
    chosen one if it is further down."""
    ranks = list(range(1, min(MATCHES_DETAILED, count) + 1))
    if chosen is not None and chosen not in ranks:
        ranks.append(chosen)
    return ranks


def match_details(
    results: dict[str, Any], ranked: list[tuple[str, dict[str, str]]], chosen: int | None,
    lifts: dict[str, dict[str, Any] | None], references: dict[str, ReferenceCode],
) -> list[MatchDetail]:
    """The matches of `detailed_ranks`; the chosen one (or else the first) is open."""
    ranks = detailed_ranks(len(ranked), chosen)
    attribution = _dict(results.get("block_attribution"))
    children = _dict(results.get("children"))
    out = []
    for rank in ranks:
        key, match = ranked[rank - 1]
        child = match.get("child_sha256", "")
        child_name = _dict(children.get(child)).get("name", child)
        func = find_function(lifts.get(child), match.get("address", ""))
        drops = _dict(attribution.get(key)) or None
        out.append(MatchDetail(
            rank, key, match, _sample_side(match, child_name, func, drops),
            _reference_side(match, references[key]), drops is not None,
            rank == (chosen or 1),
        ))
    return out


def explanation_html(markdown: str | None) -> Markup:
    """The stored Markdown explanation as HTML: raw HTML in it is shown as text."""
    return Markup(_markdown.render(markdown or ""))  # noqa: S704 - markdown-it escapes, html off


def render_report(
    *, sha256: str, model: str, row: dict[str, Any], results: dict[str, Any],
    explanation: str | None, chosen: int | None,
    lifts: dict[str, dict[str, Any] | None], references: dict[str, ReferenceCode],
) -> str:
    ranked = ranked_matches(results)
    families = family_rows(results)
    return _env.get_template("report.html").render(
        sha256=sha256, model=model, row=row, results=results,
        verdict=str(results.get("verdict", "unknown")),
        present=str(results.get("families_present", "")).split(),
        weak=str(results.get("families_weak", "")).split(),
        families=families, chart=chart(families), ranked=ranked,
        details=match_details(results, ranked, chosen, lifts, references),
        children=_dict(results.get("children")),
        skipped=[_dict(v) | {"name": _dict(v).get("name") or k}
                 for k, v in _dict(results.get("skipped")).items()],
        explanation=explanation_html(explanation),
        mark_min_drop=MARK_MIN_DROP, marked_blocks=MARKED_BLOCKS, occluded_groups=OCCLUDED_GROUPS,
    )
