"""Lift a binary's functions with angr: the one place that knows angr's API.

Used by the pipeline's lift activity (inside a resource-limited child process) and by
the model's data tools. The output is plain JSON-able data so that it can sit in the
blob store and be read without angr.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import gc
import gzip
import logging
import multiprocessing
import re
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from lifting import cfg_slices

# /2: referenced strings are filled in. /3: addresses are the file's own virtual
# addresses (as `nm`/objdump show them), jump-table fragments are merged into their
# function (see _fragments), `stripped` means "no static symbol table".
LIFT_FORMAT = "ae-lift/3"
# The blob store's derived-blob kind under which a binary's lift is cached (by its sha256).
LIFT_CACHE_KIND = f"lift-{LIFT_FORMAT.replace('/', '-')}"
DEFAULT_CHUNK = 64  # functions per parallel work item (progress and balance vs overhead)
# Forking pays for itself only on binaries with several chunks of functions; below, each
# worker would also hold its own copy of the pages it touches, under the same limits.
PARALLEL_MIN_CHUNKS = 4
_PR_SET_PDEATHSIG = 1

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
    merge_fragments: bool = True,
    workers: int = 1,
    chunk_size: int = DEFAULT_CHUNK,
) -> dict[str, Any]:
    """Recover functions with CFGFast and return their blocks, edges and VEX statements.

    merge_fragments=False keeps angr's own function split (for measuring the merge), and
    so does max_functions; both recover the CFG in one piece. workers > 1 shares the
    lift between forked processes (see lift_binary_extras); the result is the same as
    with one.
    """
    lifted, _extras = lift_binary_extras(path, progress, max_functions, merge_fragments,
                                         workers, chunk_size)
    return lifted


def lift_binary_extras(
    path: str,
    progress: Callable[[str], None] | None = None,
    max_functions: int | None = None,
    merge_fragments: bool = True,
    workers: int = 1,
    chunk_size: int = DEFAULT_CHUNK,
    extra: Callable[[dict[str, Any]], Any] | None = None,
    slice_bytes: int = cfg_slices.SLICE_BYTES,
) -> tuple[dict[str, Any], list[Any]]:
    """lift_binary, plus extra(record) of every lifted function (None without `extra`),
    computed where the function was lifted (the caller's features, in parallel too).

    Two ways to share a lift between `workers` forked processes; the output does not
    depend on their number:
    - a big x86 ELF (lifting/cfg_slices.py) is cut into slices; each process recovers
      the CFG of one slice at a time, then lifts that slice's functions;
    - any other binary has one CFGFast here; then its functions are cut into chunks of
      chunk_size that the processes lift (copy-on-write views of the project and CFG).
    Records come back in address order. Progress is reported per slice or chunk.
    """
    angr = import_angr()
    say = progress or (lambda _msg: None)
    try:
        project = angr.Project(path, auto_load_libs=False, load_debug_info=False)
    except MemoryError:
        raise  # the memory limit, not the file (lifting/child.py names it)
    except Exception as exc:  # cle raises many types for malformed input
        raise UnsupportedBinary(f"angr cannot load the file: {type(exc).__name__}: {exc}") from exc

    obj = project.loader.main_object
    if obj is None or obj.__class__.__name__ == "Blob":
        raise UnsupportedBinary("not an executable format angr recognises")
    arch = project.arch
    say(f"loaded {obj.__class__.__name__} {arch.name}")
    to_file = _file_addresses(obj)
    plan = None
    if merge_fragments and max_functions is None:  # both ask for angr's own single run
        plan = _slices(project, path, slice_bytes, say)
    if plan is not None:
        lifted, absorbed = _lift_slices(_SliceJob(project, plan, to_file, extra), workers, say)
    else:
        cfg = project.analyses.CFGFast(normalize=True, data_references=True,
                                       show_progressbar=False)
        say(f"cfg: {len(cfg.kb.functions)} functions")
        job = _LiftJob.of(project, cfg, to_file, extra, merge_fragments)
        absorbed = job.absorbed
        say(f"merged {absorbed} jump-table fragments into {len(job.parts)} functions")
        parallel = None
        chunks = len(job.todo) / chunk_size
        if workers > 1 and max_functions is None and chunks > PARALLEL_MIN_CHUNKS:
            try:
                parallel = _lift_parallel(job, workers, chunk_size, say)
            except BrokenProcessPool:  # a worker died (e.g. at a tight memory limit): alone
                say("a lift worker died: lifting the functions in this process")
        lifted = parallel if parallel is not None else _lift_serial(job, max_functions, say)
    functions = [record for record, _extra in lifted]

    return {
        "format": LIFT_FORMAT,
        "binary": {
            "format": obj.__class__.__name__,
            "arch": arch.name,
            "bits": arch.bits,
            "endness": str(arch.memory_endness),
            "entry": hex(to_file(project.entry)),
            "stripped": is_stripped(path, obj, functions),
            "fragments_merged": absorbed,
        },
        "functions": functions,
    }, [e for _record, e in lifted]


def _slices(project: Any, path: str, slice_bytes: int,
            say: Callable[[str], None]) -> cfg_slices.SlicePlan | None:
    """The binary's CFG slices; None (one CFG) where there are none or where reading
    its tables failed: a crafted file is lifted the way it was before slicing."""
    try:
        return cfg_slices.plan(project, path, slice_bytes)
    except MemoryError:
        raise
    except Exception as exc:  # capstone and cle on crafted input raise many types
        say(f"CFG in one piece: the slices could not be planned ({type(exc).__name__}: {exc})")
        return None


def import_angr() -> Any:
    """angr, with its CFG and function maps kept in memory.

    By default angr 10 moves CFG nodes and functions beyond the first thousand to an
    LMDB file and reads them back on use: on tar that cost 20-25% of CFGFast's time
    for ~20 MB less memory, and a process forked while the file is open must not write
    to it (the sliced lift forks and then runs CFGFast). The switches are module
    constants read when a knowledge base is made, so they are set after the import.
    """
    _quiet_angr()
    import angr  # heavy: imported only where lifting actually happens
    from angr.knowledge_plugins.cfg import spilling_cfg
    from angr.knowledge_plugins.functions import function_manager

    spilling_cfg.USE_SPILLING_CFGNODE_DICT = False
    function_manager.USE_SPILLING_FUNCTION_DICT = False
    return angr


class _LiftJob:
    """What lifting one function needs, shared with forked workers by inheritance."""

    def __init__(self, project: Any, cfg: Any, todo: list[Any], parts: dict[int, list[Any]],
                 to_file: Callable[[int], int], starts: dict[int, int],
                 extra: Callable[[dict[str, Any]], Any] | None,
                 foreign: frozenset[int] = frozenset()) -> None:
        self.project, self.cfg, self.todo, self.parts = project, cfg, todo, parts
        self.to_file, self.starts, self.extra, self.foreign = to_file, starts, extra, foreign
        self.absorbed = sum(len(frags) for frags in parts.values())

    @classmethod
    def of(cls, project: Any, cfg: Any, to_file: Callable[[int], int],
           extra: Callable[[dict[str, Any]], Any] | None, merge_fragments: bool = True,
           owns: Callable[[int], bool] = lambda _addr: True,
           foreign: frozenset[int] = frozenset()) -> _LiftJob:
        """The functions of a recovered CFG to lift (those `owns` accepts), with the
        jump-table fragments merged into their function."""
        obj = project.loader.main_object
        candidates = [
            func for func in sorted(cfg.kb.functions.values(), key=lambda f: f.addr)
            if not (func.is_plt or func.is_simprocedure or func.is_syscall or func.is_alignment)
            and obj.contains_addr(func.addr) and owns(func.addr)
        ]
        ranges = _unwind_ranges(obj)
        starts = _padded_starts(obj, cfg, candidates, ranges)
        parts = _fragments(obj, cfg, candidates, ranges, starts) if merge_fragments else {}
        absorbed = {frag.addr for frags in parts.values() for frag in frags}
        todo = [func for func in candidates if func.addr not in absorbed]
        return cls(project, cfg, todo, parts, to_file, starts, extra, foreign)

    def lift(self, lo: int, hi: int) -> list[tuple[dict[str, Any], Any]]:
        out = []
        for func in self.todo[lo:hi]:
            record = _lift_function(self.project, self.cfg, func, self.parts.get(func.addr, []),
                                    self.to_file, self.starts.get(func.addr), self.foreign)
            if record is not None:
                out.append((record, self.extra(record) if self.extra else None))
        return out


class _SliceJob:
    """What lifting one slice needs, shared with forked workers by inheritance."""

    def __init__(self, project: Any, plan: cfg_slices.SlicePlan, to_file: Callable[[int], int],
                 extra: Callable[[dict[str, Any]], Any] | None) -> None:
        self.project, self.plan, self.to_file, self.extra = project, plan, to_file, extra

    def lift(self, i: int) -> tuple[list[tuple[dict[str, Any], Any]], int]:
        """Slice i's CFG, then its functions: (records with extras, fragments merged)."""
        with cfg_slices.hooked(self.project, self.plan, i) as foreign:
            cfg = cfg_slices.recover(self.project, self.plan, i)
            job = _LiftJob.of(self.project, cfg, self.to_file, self.extra,
                              owns=lambda addr: self.plan.owner(addr) == i, foreign=foreign)
            return job.lift(0, len(job.todo)), job.absorbed


def _lift_serial(job: _LiftJob, max_functions: int | None,
                 say: Callable[[str], None]) -> list[tuple[dict[str, Any], Any]]:
    lifted: list[tuple[dict[str, Any], Any]] = []
    for i in range(len(job.todo)):
        lifted += job.lift(i, i + 1)
        if len(lifted) % 200 == 0:
            say(f"lifted {len(lifted)} functions")
        if max_functions is not None and len(lifted) >= max_functions:
            break
    return lifted


_INHERITED: _LiftJob | _SliceJob | None = None  # the job a forked worker inherited


def _lift_inherited(args: tuple[int, ...]) -> Any:
    if _INHERITED is None:
        raise RuntimeError("lift worker started without a job (not forked from the lifter)")
    return _INHERITED.lift(*args)


def _die_with_parent() -> None:
    """Forked lift workers die with the process that forked them (which is killed as a
    whole process group on revoke, timeout or a dead activity worker)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _forked(job: _LiftJob | _SliceJob, items: Sequence[tuple[int, ...]],
            workers: int) -> Iterator[tuple[int, Any]]:
    """(index, job.lift(*item)) of every item, as `workers` forked processes finish
    them; the workers see the job (project, CFG) copy-on-write. Raises BrokenProcessPool
    when a worker dies; on any failure the items not yet started are dropped."""
    global _INHERITED
    _INHERITED = job
    # Objects made so far (angr's project and CFG) go to a generation the collector never
    # scans: a forked worker that ran a full collection would write to every object and
    # so copy the whole parent's memory page by page.
    gc.freeze()
    try:
        context = multiprocessing.get_context("fork")  # workers must inherit the job
        with ProcessPoolExecutor(min(workers, len(items)), mp_context=context,
                                 initializer=_die_with_parent) as pool:
            futures = {pool.submit(_lift_inherited, item): i for i, item in enumerate(items)}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            except BaseException:  # not worth waiting for the rest
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        _INHERITED = None
        gc.unfreeze()


def _lift_parallel(job: _LiftJob, workers: int, chunk_size: int,
                   say: Callable[[str], None]) -> list[tuple[dict[str, Any], Any]]:
    chunks = [(lo, min(lo + chunk_size, len(job.todo)))
              for lo in range(0, len(job.todo), chunk_size)]
    parts: dict[int, list[tuple[dict[str, Any], Any]]] = {}
    for i, part in _forked(job, chunks, workers):
        parts[i] = part
        say(f"lifted {sum(map(len, parts.values()))} functions ({len(parts)}/{len(chunks)} "
            f"chunks, {workers} workers)")
    return [pair for i in range(len(chunks)) for pair in parts[i]]


def _is_arm(arch: Any) -> bool:
    return arch.name.startswith("ARM")  # ARMEL, ARMHF, ARMCortexM (not AARCH64)


def _file_addresses(obj: Any) -> Callable[[int], int]:
    """angr address -> the address the file itself uses, as `nm` and objdump print it.

    angr maps position-independent objects at a base of its choosing (0x400000 for a
    shared object linked at 0) and marks ARM Thumb code with an odd address; GNU nm
    and objdump print Thumb functions with the low bit cleared (st_value keeps it), so
    it is cleared here too and the function's "thumb" flag keeps the mode.
    """
    shift = obj.mapped_base - obj.linked_base
    if _is_arm(obj.arch):
        return lambda addr: (addr - shift) & ~1
    return lambda addr: addr - shift


def is_stripped(path: str, obj: Any, functions: list[dict[str, Any]]) -> bool:
    """No static symbol table: ELF without .symtab, PE without COFF symbols.

    A stripped shared object keeps .dynsym, so angr still names its exported
    functions; that does not make it unstripped. Other formats (Mach-O), and headers
    too damaged to read here though cle loaded them: no function carries a name.
    """
    import pefile  # cle's own PE parser
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    kind = obj.__class__.__name__
    try:
        if kind.startswith("ELF"):
            with open(path, "rb") as handle:
                return not any(section["sh_type"] == "SHT_SYMTAB"
                               for section in ELFFile(handle).iter_sections())
        if kind == "PE":
            return int(pefile.PE(path, fast_load=True).FILE_HEADER.NumberOfSymbols) == 0
    except (ELFError, pefile.PEFormatError, OSError, ValueError, KeyError):
        pass
    return not any(f.get("name") for f in functions)


def _lift_slices(job: _SliceJob, workers: int, say: Callable[[str], None]
                 ) -> tuple[list[tuple[dict[str, Any], Any]], int]:
    """Every slice lifted (by `workers` forked processes, or here); then a cold part that
    a function of another slice took as blocks is dropped as a function of its own."""
    count = len(job.plan)
    done: dict[int, tuple[list[tuple[dict[str, Any], Any]], int]] = {}

    def report(i: int) -> None:
        say(f"lifted {sum(len(d[0]) for d in done.values())} functions "
            f"({len(done)}/{count} slices, slice {i + 1} had {len(done[i][0])})")

    say(f"recovering the CFG in {count} slices, {min(workers, count)} at a time")
    if workers > 1:
        try:
            for i, result in _forked(job, [(i,) for i in range(count)], workers):
                done[i] = result
                report(i)
        except BrokenProcessPool:  # a worker died (e.g. at a tight memory limit): alone
            say("a lift worker died: lifting the remaining slices in this process")
    for i in range(count):
        if i not in done:
            done[i] = job.lift(i)
            report(i)

    taken: dict[str, set[int]] = {}
    for i in range(count):
        for record, _extra in done[i][0]:
            for block in record["blocks"]:
                if block["addr"] != record["addr"]:
                    taken.setdefault(block["addr"], set()).add(i)
    lifted = [(record, extra) for i in range(count) for record, extra in done[i][0]
              if not taken.get(record["addr"], set()) - {i}]
    return lifted, sum(d[1] for d in done.values())


def _unwind_ranges(obj: Any) -> list[tuple[int, int]]:
    """[start, end) of each function as the unwind tables record it (angr's addresses,
    Thumb bit cleared): ELF .eh_frame FDEs and PE .pdata records, via cle's hints."""
    from cle.backends.backend import FunctionHintSource

    return sorted({(h.addr & ~1, (h.addr & ~1) + h.size) for h in obj.function_hints
                   if h.size and h.source == FunctionHintSource.EH_FRAME})


def _padded_starts(obj: Any, cfg: Any, candidates: list[Any],
                   ranges: list[tuple[int, int]]) -> dict[int, int]:
    """Functions angr starts in the padding before an unwind entry: {angr start: entry}.

    gcc pads i686 functions with multi-byte no-ops (`lea 0x0(%esi),%esi`); CFGFast's
    complete scan sometimes starts a function there and runs on into the next
    function without splitting at its .eh_frame start, so the function would be
    reported a few bytes before its symbol. Such a function is reported from the
    unwind entry instead, its first block lifted again from there.
    """
    range_starts = [start for start, _ in ranges]
    known = set(range_starts) | _symbol_starts(obj)
    out: dict[int, int] = {}
    for func in candidates:
        addr = func.addr & ~1
        node = cfg.model.get_any_node(func.addr)
        if addr in known or node is None:
            continue
        i = bisect.bisect_right(range_starts, addr)
        if i < len(range_starts) and range_starts[i] < addr + node.size:
            out[func.addr] = range_starts[i] | (func.addr & 1)
    return out


def _symbol_starts(obj: Any) -> set[int]:
    return {sym.rebased_addr & ~1 for sym in obj.symbols if sym.is_function and sym.rebased_addr}


def _fragments(obj: Any, cfg: Any, candidates: list[Any], ranges: list[tuple[int, int]],
               starts: dict[int, int]) -> dict[int, list[Any]]:
    """Pieces of a function that CFGFast split off, keyed by the function they belong to.

    When angr cannot resolve a jump table (gcc/clang AArch64 tables of relative
    offsets, i686 GOT-relative tables, ARM `add pc` tables), its complete scan finds
    the unreached case blocks and makes each a function of its own. Rule: a function
    F that starts strictly inside the unwind range (.eh_frame FDE or PE .pdata record:
    start and length) of a function H, does not itself start at a function symbol
    (.symtab or .dynsym) or an unwind entry, and is pointed at, called or jumped to
    from nothing outside H's range, is a piece of H (calls from a jump
    table angr did resolve are allowed: ARM `add lr, pc` tables look like calls).

    Real functions start at a symbol or unwind entry, or are called or pointed at,
    so they stay functions (bench/lift_functions.md checks this against the -g twin).
    Not covered: code without such ranges. armhf's .ARM.exidx records only starts,
    and linkers merge runs of identical entries, so the extent of a function is not
    known there; a rule without extents (merge everything up to the next known start
    after a function with a table-lookup jump) was tried and swallowed real functions
    of cmark (static re2c scanners, only pointed at through PC-relative arithmetic that
    angr records no reference for), so angr's split is kept on such code.
    """
    known = {start for start, _ in ranges} | _symbol_starts(obj)
    by_start = {starts.get(func.addr, func.addr) & ~1: func for func in candidates}
    range_starts = [start for start, _ in ranges]
    parts: dict[int, list[Any]] = {}
    for func in candidates:
        addr = func.addr & ~1
        if addr in known or func.addr in starts:
            continue
        i = bisect.bisect_right(range_starts, addr) - 1
        if i < 0:
            continue
        start, end = ranges[i]
        host = by_start.get(start)
        if host is None or not start < addr < end or not _only_reached_from(cfg, func, start, end):
            continue
        parts.setdefault(host.addr, []).append(func)
    return parts


def _only_reached_from(cfg: Any, func: Any, start: int, end: int) -> bool:
    """Nothing outside [start, end) points at the function or jumps to it, and nothing
    calls it but a jump table (ARM `add lr, pc, #4; ldr pc, ...` tables look like calls
    to angr). Code inside the range may take its address (AArch64 `adr` of a label)."""
    for xref in cfg.kb.xrefs.get_xrefs_by_dst(func.addr):
        if xref.ins_addr is None or not start <= (xref.ins_addr & ~1) < end:
            return False
    node = cfg.model.get_any_node(func.addr)
    if node is None:
        return False
    for pred, kind in cfg.model.get_predecessors_and_jumpkinds(node):
        if not start <= (pred.addr & ~1) < end:
            return False
        jump = cfg.indirect_jumps.get(pred.addr)
        if kind == "Ijk_Call" and not (jump is not None and jump.jumptable):
            return False
    return True


def _lift_function(project: Any, cfg: Any, func: Any, fragments: list[Any],
                   to_file: Callable[[int], int], start: int | None = None,
                   foreign: frozenset[int] = frozenset()) -> dict[str, Any] | None:
    """One function (plus the fragments merged into it) as blocks, edges, VEX, calls.

    start: where the function really begins when angr began it in padding before
    (_padded_starts); its first block is lifted again from there. foreign: stubs that
    stand for functions of other slices (lifting/cfg_slices.py), not imports.
    """
    pieces = [func, *fragments]
    blocks = sorted({b.addr: b for piece in pieces for b in piece.blocks}.values(),
                    key=lambda b: b.addr)
    if not blocks:
        return None
    index = {b.addr: i for i, b in enumerate(blocks)}  # angr's addresses, as in its graph
    if start is not None and blocks[0].addr == func.addr < start < func.addr + blocks[0].size:
        first = blocks[0]
        blocks[0] = project.factory.block(start, size=first.addr + first.size - start)
    else:
        start = None
    block_records = []
    for block in blocks:
        try:
            irsb = block.vex
        except Exception:  # undecodable bytes inside a function: keep the shape, drop IR
            block_records.append({"addr": hex(to_file(block.addr)), "size": block.size, "vex": []})
            continue
        statements = [str(stmt) for stmt in irsb.statements if stmt.tag != "Ist_IMark"]
        statements.append(f"NEXT {irsb.jumpkind} {irsb.next}")
        block_records.append({"addr": hex(to_file(block.addr)), "size": block.size,
                              "vex": statements})

    edges: list[list[int]] = []
    for piece in pieces:
        for src, dst in piece.graph.edges():
            if src.addr in index and dst.addr in index:
                edges.append([index[src.addr], index[dst.addr]])
    if fragments:
        edges = _fragment_edges(cfg, func, fragments, index, edges)
    else:  # angr's graph yields edges in an order that differs between runs: fix it
        edges = sorted({(s, d): [s, d] for s, d in edges}.values())

    calls: list[str] = []
    for piece in pieces:
        for site in piece.get_call_sites():
            target = piece.get_call_target(site)
            if target is None or target in foreign:
                continue
            callee = cfg.kb.functions.function(addr=target)
            if callee is not None and not callee.name.startswith("Unresolvable") and (
                    callee.is_plt or callee.is_simprocedure):
                calls.append(callee.name)
    strings: list[str] = []
    for piece in pieces:
        strings += [s for s in _referenced_strings(cfg, piece) if s not in strings]

    name = func.name
    is_auto_name = name.startswith("sub_") or name == f"sub_{func.addr:x}"
    return {
        "addr": hex(to_file(start if start is not None else func.addr)),
        "name": None if is_auto_name else name,
        "size": sum(b.size for b in blocks),
        "blocks": block_records,
        "edges": edges,
        "calls": calls,
        "strings": strings[:16],
        "runtime": name in RUNTIME_FUNCTIONS,
        "thumb": _is_arm(project.arch) and bool(func.addr & 1),
    }


def _fragment_edges(cfg: Any, func: Any, fragments: list[Any], index: dict[int, int],
                    edges: list[list[int]]) -> list[list[int]]:
    """Edges of a merged function: each piece's own, the CFG's jumps between pieces,
    and one edge from each unresolved indirect jump to every fragment nothing reaches
    (the jump-table edges angr could not compute)."""
    seen = {(s, d) for s, d in edges}
    for addr in index:
        node = cfg.model.get_any_node(addr)
        if node is None:
            continue
        for succ, kind in cfg.model.get_successors_and_jumpkinds(node):
            if succ.addr in index and not (kind == "Ijk_Call" and succ.addr == func.addr):
                seen.add((index[addr], index[succ.addr]))
    entered = {d for s, d in seen if s != d}
    orphans = [index[frag.addr] for frag in fragments
               if frag.addr in index and index[frag.addr] not in entered]
    dispatchers = [index[jump.addr] for jump in cfg.indirect_jumps.values()
                   if jump.addr in index and jump.jumpkind == "Ijk_Boring"
                   and not jump.resolved_targets]
    seen.update((src, dst) for src in dispatchers for dst in orphans)
    return [[s, d] for s, d in sorted(seen)]


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
