"""Lift a binary's functions with angr: the one place that knows angr's API.

Used by the pipeline's lift activity (inside a resource-limited child process) and by
the model's data tools. The output is plain JSON-able data so that it can sit in the
blob store and be read without angr.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

LIFT_FORMAT = "ae-lift/2"  # /2: referenced strings are filled in

# Function names of compiler/runtime scaffolding: never worth attributing.
RUNTIME_FUNCTIONS = frozenset(
    {
        "_start", "_init", "_fini", "__libc_csu_init", "__libc_csu_fini", "deregister_tm_clones",
        "register_tm_clones", "__do_global_dtors_aux", "frame_dummy", "__x86.get_pc_thunk.bx",
        "__x86.get_pc_thunk.ax", "__x86.get_pc_thunk.cx", "__x86.get_pc_thunk.dx",
        "__x86.get_pc_thunk.si", "__x86.get_pc_thunk.di", "__x86.get_pc_thunk.bp",
        "call_weak_fn", "__cxa_finalize", "_dl_relocate_static_pie", "__stack_chk_fail_local",
    }
)


def is_current_lift(path: Path) -> bool:
    """A cached lift (gzip JSON, "format" written first) made by this lifter version?

    Reads only the head of the file: caches of older formats are lifted again rather
    than trusted (ae-lift/1 had no strings, so a model fed them would train without).
    """
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            head = handle.read(200)
    except (OSError, EOFError):
        return False
    found = re.match(r'\{\s*"format"\s*:\s*"([^"]+)"', head)
    return found is not None and found.group(1) == LIFT_FORMAT


class UnsupportedBinary(Exception):
    """The file is not something angr can load as code (bad input, never retried)."""


def _quiet_angr() -> None:
    for name in ("angr", "cle", "pyvex", "claripy", "archinfo"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # angr logs a harmless error at import when its optional unicorn engine is absent.
    logging.getLogger("angr.state_plugins.unicorn_engine").setLevel(logging.CRITICAL)


def lift_binary(
    path: str,
    progress: Callable[[str], None] | None = None,
    max_functions: int | None = None,
) -> dict[str, Any]:
    """Recover functions with CFGFast and return their blocks, edges and VEX statements."""
    _quiet_angr()
    import angr  # heavy: imported only where lifting actually happens

    say = progress or (lambda _msg: None)
    try:
        project = angr.Project(path, auto_load_libs=False, load_debug_info=False)
    except Exception as exc:  # cle raises many types for malformed input
        raise UnsupportedBinary(f"angr cannot load the file: {type(exc).__name__}: {exc}") from exc

    obj = project.loader.main_object
    if obj is None or obj.__class__.__name__ == "Blob":
        raise UnsupportedBinary("not an executable format angr recognises")
    arch = project.arch
    say(f"loaded {obj.__class__.__name__} {arch.name}")
    cfg = project.analyses.CFGFast(normalize=True, data_references=True, show_progressbar=False)
    say(f"cfg: {len(cfg.kb.functions)} functions")

    functions: list[dict[str, Any]] = []
    for func in sorted(cfg.kb.functions.values(), key=lambda f: f.addr):
        if func.is_plt or func.is_simprocedure or func.is_syscall or func.is_alignment:
            continue
        if not obj.contains_addr(func.addr):
            continue
        record = _lift_function(project, cfg, func)
        if record is not None:
            functions.append(record)
        if len(functions) % 200 == 0:
            say(f"lifted {len(functions)} functions")
        if max_functions is not None and len(functions) >= max_functions:
            break

    return {
        "format": LIFT_FORMAT,
        "binary": {
            "format": obj.__class__.__name__,
            "arch": arch.name,
            "bits": arch.bits,
            "endness": str(arch.memory_endness),
            "entry": hex(project.entry),
            "stripped": not any(f.get("name") for f in functions),
        },
        "functions": functions,
    }


def _lift_function(project: Any, cfg: Any, func: Any) -> dict[str, Any] | None:
    blocks = sorted(func.blocks, key=lambda b: b.addr)
    if not blocks:
        return None
    index = {b.addr: i for i, b in enumerate(blocks)}
    block_records = []
    for block in blocks:
        try:
            irsb = block.vex
        except Exception:  # undecodable bytes inside a function: keep the shape, drop IR
            block_records.append({"addr": hex(block.addr), "size": block.size, "vex": []})
            continue
        statements = [str(stmt) for stmt in irsb.statements if stmt.tag != "Ist_IMark"]
        statements.append(f"NEXT {irsb.jumpkind} {irsb.next}")
        block_records.append({"addr": hex(block.addr), "size": block.size, "vex": statements})

    edges = []
    for src, dst in func.graph.edges():
        if src.addr in index and dst.addr in index:
            edges.append([index[src.addr], index[dst.addr]])

    calls = []
    for site in func.get_call_sites():
        target = func.get_call_target(site)
        callee = cfg.kb.functions.function(addr=target) if target is not None else None
        if callee is not None and not callee.name.startswith("Unresolvable"):
            calls.append(callee.name if (callee.is_plt or callee.is_simprocedure) else "")
    strings = _referenced_strings(cfg, func)

    name = func.name
    is_auto_name = name.startswith("sub_") or name == f"sub_{func.addr:x}"
    return {
        "addr": hex(func.addr),
        "name": None if is_auto_name else name,
        "size": sum(b.size for b in blocks),
        "blocks": block_records,
        "edges": edges,
        "calls": [c for c in calls if c],
        "strings": strings,
        "runtime": name in RUNTIME_FUNCTIONS,
    }


def _referenced_strings(cfg: Any, func: Any, limit: int = 16) -> list[str]:
    """Printable strings the function points at (data references found by CFGFast)."""
    found: list[str] = []
    try:
        refs = func.string_references(minimum_length=4)
    except Exception:
        return found
    seen: set[int] = set()
    for addr, content in refs:
        if addr in seen:  # one string used at several call sites counts once
            continue
        seen.add(addr)
        text = content.decode("latin-1") if isinstance(content, bytes) else str(content)
        found.append(text[:64])
        if len(found) >= limit:
            break
    return found
