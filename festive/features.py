"""Turn lifted functions (ae-lift/1) into token bags for FESTIVE v0.

Why tokens: raw VEX text is full of things that change with every build (temporaries,
constants, addresses, guest register offsets). What survives recompilation, and to a
degree a change of architecture, is *which* IR operations a function performs, in what
order inside a block, and the shape of its control-flow graph. So a statement becomes
its tag plus IR op name (operand widths optionally stripped, so that `Add64` on AMD64
and `Add32` on i386 agree), a block gives unigrams and bigrams, and the function adds
structural counts, imported callee names and referenced strings.

numpy only; no torch here.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Any

FEATURE_VERSION = "vexop/1"

# Functions below this many basic blocks are wrappers/thunks: too generic to attribute.
MIN_BLOCKS = 5

_TMP_ASSIGN = re.compile(r"^t\d+ = (.*)$")
_HEAD = re.compile(r"^([A-Za-z0-9_]+)")
_JUMPKIND = re.compile(r"Ijk_[A-Za-z_]+")
_DIGITS = re.compile(r"\d+")
_HELPER = re.compile(r"^[a-z0-9]+g_(\w+)$")  # amd64g_calculate_condition -> calculate_condition
_TMP = re.compile(r"^t\d+$")
_CONST = re.compile(r"^0x[0-9a-fA-F]+$")
_HEX = re.compile(r"0x([0-9a-fA-F]+)")
ADDRESS_WINDOW = 0x1000000  # immediates this close to the function's address are addresses
MIN_CONSTANT = 0x20  # smaller immediates are everywhere (indices, flags, small offsets)


@dataclass(frozen=True)
class FeatureConfig:
    """Switches for the normalisation; saved with the index so queries match it."""

    # Add64 -> Add, LDle:I32 -> LD. Measured on the corpus: stripping lifts amd64<->arm64
    # top-1 family accuracy (0.19 -> 0.43) but lowers same-arch static-link recall at the
    # calibrated threshold (0.40 -> 0.32), and cross-arch pairs rarely pass the threshold
    # either way (~1%): v0 keeps widths.
    strip_widths: bool = False
    # Also emit width-stripped op tokens (prefixed "~") beside the exact ones. Measured:
    # no gain (static-link recall 0.396 vs 0.402, cross-arch top-1 0.04), so off.
    also_stripped: bool = False
    drop_put: bool = True  # guest register writes (arch-specific; measured: better off)
    drop_get: bool = False  # guest register reads
    bigrams: bool = True
    calls: bool = True  # imported callee names, e.g. call:memcpy
    strings: bool = True  # referenced strings, e.g. str:invalid distance too far back
    structure: bool = True  # block/edge/loop/call count buckets
    constants: bool = True  # immediates that are not addresses/small/stack offsets

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


def _op(name: str, strip_widths: bool) -> str:
    helper = _HELPER.match(name)
    if helper:  # clean-helper calls: keep the helper's meaning, drop the arch prefix
        return "helper:" + helper.group(1)
    return _DIGITS.sub("", name) if strip_widths else name


def _expression(rhs: str, strip_widths: bool) -> str | None:
    """Token for the right-hand side of `tN = ...`; None for plain copies."""
    if _TMP.match(rhs):
        return None  # copy between temporaries: an artefact of unoptimised VEX
    if _CONST.match(rhs):
        return "CONST"
    if rhs.startswith("if ("):  # guarded load (ARM LoadG)
        return "LDG"
    if rhs.startswith("DIRTY"):
        return "DIRTY"
    if rhs.startswith(("LDle:", "LDbe:")):
        ty = rhs[5 : rhs.index("(")] if "(" in rhs else ""
        return "LD" if strip_widths else f"LD:{ty}"
    if rhs.startswith(("GET:", "GETI(")):
        if rhs.startswith("GETI("):
            return "GETI"
        return "GET" if strip_widths else "GET:" + rhs[4 : rhs.index("(")]
    head = _HEAD.match(rhs)
    if head is None:
        return "EXPR"
    name = head.group(1)
    if name == "ITE":
        return "ITE"
    return _op(name, strip_widths)


def normalise_statement(stmt: str, config: FeatureConfig) -> str | None:
    """One VEX statement (as lift_binary prints it) -> one token, or None to skip it."""
    if stmt.startswith("NEXT "):
        parts = stmt.split(" ", 2)
        target = parts[2] if len(parts) > 2 else ""
        kind = "c" if _CONST.match(target) else "i"  # direct vs computed target
        return f"NEXT:{parts[1]}:{kind}"
    if stmt.startswith("======"):  # AbiHint and other markers
        return None
    assign = _TMP_ASSIGN.match(stmt)
    if assign:
        return _expression(assign.group(1), config.strip_widths)
    if stmt.startswith("if ("):
        jump = _JUMPKIND.search(stmt)
        return f"EXIT:{jump.group(0)}" if jump else "STG"  # conditional exit / guarded store
    if stmt.startswith(("PUT(", "PUTI(")):
        return None if config.drop_put else "PUT"
    if stmt.startswith(("STle(", "STbe(")):
        return "ST"
    head = _HEAD.match(stmt)
    return head.group(1) if head else None


def block_tokens(vex: list[str], config: FeatureConfig) -> list[str]:
    tokens = []
    for stmt in vex:
        token = normalise_statement(stmt, config)
        if token is None or (config.drop_get and token.startswith("GET")):
            continue
        tokens.append(token)
    return tokens


def constant_tokens(vex: list[str], func_addr: int) -> list[str]:
    """Distinctive immediates (struct offsets, magic numbers, table sizes) as tokens.

    They survive recompilation and, between 64-bit targets, often the architecture.
    Skipped: small values, negative-small values (stack adjustments, -1 masks) and
    anything near the function's own address (code/data pointers move every build).
    """
    out = []
    for stmt in vex:
        for digits in _HEX.findall(stmt):
            value = int(digits, 16)
            width = 4 * len(digits)
            if value >> (width - 1):  # negative in its own width
                if (1 << width) - value < 0x10000:
                    continue
            elif value < MIN_CONSTANT:
                continue
            if abs(value - func_addr) < ADDRESS_WINDOW:
                continue
            out.append(f"k:{value:x}")
    return out


def _bucket(value: int) -> int:
    """Log2 buckets: counts that differ by a few blocks still share a bucket."""
    return int(math.log2(value + 1))


def structural_counts(func: dict[str, Any]) -> dict[str, int]:
    """Shape of the function's CFG (blocks sorted by address, so back edge = loop)."""
    blocks = func.get("blocks", [])
    edges = func.get("edges", [])
    back_edges = sum(1 for src, dst in edges if dst <= src)
    returns = sum(1 for b in blocks if b["vex"] and b["vex"][-1].startswith("NEXT Ijk_Ret"))
    call_sites = sum(1 for b in blocks if b["vex"] and b["vex"][-1].startswith("NEXT Ijk_Call"))
    return {
        "blocks": len(blocks),
        "edges": len(edges),
        "loops": back_edges,
        "returns": returns,
        "call_sites": call_sites,
        "size": int(func.get("size", 0)),
    }


def function_tokens(func: dict[str, Any], config: FeatureConfig) -> Counter[str]:
    """Bag of tokens of one function: IR ops (+bigrams), structure, calls, strings."""
    bag: Counter[str] = Counter()
    func_addr = int(func.get("addr", "0x0"), 16)
    stripped = replace(config, strip_widths=True)
    for block in func.get("blocks", []):
        vex = block.get("vex", [])
        streams = [block_tokens(vex, config)]
        if config.also_stripped and not config.strip_widths:
            streams.append(["~" + t for t in block_tokens(vex, stripped)])
        for tokens in streams:
            bag.update(tokens)
            if config.bigrams:
                bag.update(f"{a}>{b}" for a, b in zip(tokens, tokens[1:], strict=False))
        if config.constants:
            bag.update(constant_tokens(vex, func_addr))
    if config.structure:
        counts = structural_counts(func)
        for key, value in counts.items():
            bag[f"#{key}:{_bucket(value)}"] += 1
    if config.calls:
        bag.update(f"call:{name}" for name in func.get("calls", []) if name)
    if config.strings:
        bag.update(f"str:{text[:48]}" for text in func.get("strings", []) if text)
    return bag


def is_considered(func: dict[str, Any], min_blocks: int = MIN_BLOCKS) -> bool:
    """Whether a function may drive a verdict: big enough and not runtime scaffolding."""
    return not func.get("runtime", False) and len(func.get("blocks", [])) >= min_blocks
