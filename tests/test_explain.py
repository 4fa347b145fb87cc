"""The explanation is written from the results: each branch says what the numbers say."""

from __future__ import annotations

import re

from activities.explain import render_explanation

SHA = "ab" * 32


def results(verdict: str, families: dict[str, dict[str, str]],
            present: str = "") -> dict[str, object]:
    matches = {
        f"abababababab:0x{i:x}": {
            "address": f"0x{i:x}", "name": "", "blocks": "12", "family": fam,
            "reference_function": f"f{i}", "reference_build": "zlib1g 1.2.13 amd64",
            "similarity": f"0.9{i}",
        }
        for i, fam in enumerate(f for f, info in families.items()
                                for _ in range(int(info["functions_matched"])))
    }
    return {
        "model": "FESTIVE Func Sim", "model_version": "0.1.0", "verdict": verdict,
        "families_present": present,
        "confidence": "0.9000", "functions_total": "61", "functions_considered": "42",
        "functions_matched": str(len(matches)), "families": families, "matches": matches,
        "children": {SHA: {"name": "zpack", "format": "ELF", "arch": "AMD64",
                           "functions": "61"}},
        "skipped": {"sample.zip/readme.txt": {"name": "readme.txt", "reason": "not an executable"}},
    }


def test_verdict_with_family_table_and_evidence() -> None:
    text = render_explanation(SHA, results("zlib", {
        "zlib": {"status": "present", "probability": "0.9000", "functions_matched": "3",
                 "share_of_considered": "0.071", "mean_similarity": "0.95",
                 "best_similarity": "0.99"},
        "expat": {"status": "present", "probability": "0.8000", "functions_matched": "2",
                  "share_of_considered": "0.048", "mean_similarity": "0.91",
                  "best_similarity": "0.93"}}, present="zlib expat"))
    assert "**Verdict: zlib** (probability 0.9000; also present: expat)" in text
    assert "| zlib | present | 0.9000 | 3 | 0.071 | 0.95 | 0.99 |" in text
    assert text.index("| zlib |") < text.index("| expat |")
    assert "## Best matching functions (top 5 of 5)" in text
    assert "61 functions were recovered in 1 binary; 42 are large enough" in text
    assert "`sample.zip/readme.txt`: not an executable" in text


def test_weak_evidence_is_not_a_verdict() -> None:
    text = render_explanation(SHA, results("unknown", {"sqlite3": {"functions_matched": "1"}}))
    assert "No known code family found" in text and "weak evidence" in text
    assert "Verdict" not in text


def test_nothing_matched() -> None:
    text = render_explanation(SHA, results("unknown", {}))
    assert "none of the 42 functions large enough to judge matched" in text
    assert "## Families" not in text


HOSTILE = [
    "<script>document.title='pwned'</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "![x](http://evil.example/x.png)",
    "**bold** _em_ # not a heading",
    "a|b|c",
    "`tick` and ``two``",
    "` starts with a backtick",
    "line\nbreak\r\n# heading",
    "back\\slash\\|",
]


def _rendered(markdown: str) -> str:
    """HTML as a renderer that lets raw HTML through would make it (the strict case)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)


def _text_of(html: str) -> str:
    """The text a browser shows for `html` (tags dropped, entities decoded)."""
    import html as html_lib
    import re

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html))


def test_sample_names_are_escaped_in_the_markdown() -> None:
    """Hostile function, member and reference names stay text: no HTML, link, image,
    emphasis, heading or extra table cell reaches the rendered explanation, and each
    name reads back exactly (line breaks as spaces)."""
    data = results("zlib", {"zlib": {"status": "present", "probability": "0.9000",
                                     "functions_matched": str(len(HOSTILE))}},
                   present="zlib")
    for match, name in zip(data["matches"].values(), HOSTILE, strict=True):  # type: ignore[union-attr]
        match["name"] = name
        match["reference_function"] = name
    data["children"] = {f"{i:064x}": {"name": n, "format": "ELF", "arch": "AMD64",
                                      "functions": "1"} for i, n in enumerate(HOSTILE)}
    data["skipped"] = {n: {"name": n, "reason": f"not an executable: {n}"} for n in HOSTILE}
    html = _rendered(render_explanation(SHA, data))
    for tag in ("<script", "<img", "<a ", "<strong>bold", "<em>", "<h1>heading", "<h1>not"):
        assert tag not in html, tag
    shown = _text_of(html)
    for name in HOSTILE:
        flat = name.replace("\r\n", " ").replace("\n", " ")
        # function name + reference function in the table, binary, skipped member, reason
        assert shown.count(flat) >= 4, (name, shown)
    # The table keeps its columns: every body row has exactly the 6 cells of its header.
    rows = re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)
    assert rows and all(len(re.findall(r"<t[dh][ >]", row)) in (6, 7) for row in rows)


def test_code_span_and_escape_round_trip() -> None:
    from activities.explain import code, escape

    for name in HOSTILE + ["plain", " spaced ", "x"]:
        flat = name.replace("\r\n", " ").replace("\n", " ")
        assert _text_of(_rendered(code(name))).strip("\n") == flat, name
        assert _text_of(_rendered(escape(name))).strip() == flat.strip(), name


def test_plain_labels_stay_readable_in_the_markdown() -> None:
    """Only characters Markdown acts on are escaped: a label like "acme-parser 1.0"
    reads the same in the raw text."""
    from activities.explain import escape

    assert escape("acme-parser 1.0 (gcc)") == "acme-parser 1.0 (gcc)"
    assert escape("- 1. x") == "\\- 1. x" and escape("1. x") == "1\\. x"
    for name in ("- item", "+ item", "1. first", "2) second", "= rule", "# h", "> quote"):
        assert _text_of(_rendered(escape(name))).strip() == name, name
        assert not re.search(r"<(ul|ol|h\d|blockquote|hr)", _rendered(escape(name))), name
