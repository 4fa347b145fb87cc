"""The explanation is written from the results: each branch says what the numbers say."""

from __future__ import annotations

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
