"""CFG recovery of a big x86 ELF in slices, so that several processes share it.

One CFGFast over a whole binary runs in one process, and on a library of thousands of
functions it is most of the lift (75% of the serial CPU on tar). Here the largest
executable section is cut, at function starts from .eh_frame, into a power of two of
slices (`slice_count`) of about equal work (the jumps, calls and returns a linear read
with capstone finds in each function), and CFGFast runs limited to one slice
(`regions=`). What a run over the whole binary would know about the code outside the
slice is handed in:

- each function start of another slice that the slice's code calls or jumps to is
  hooked with a stub, and the stub's address is a region of its own (CFGFast drops any
  job outside its regions): a call or a tail jump to it ends there, as at a function
  that returns, or at one that never does when its unwind range holds no `ret` and no
  tail jump to a function that returns (`no_return`);
- gcc's cold parts (`foo.cold`: an FDE whose first row moves the CFA, i.e. code entered
  in the middle of a frame, or one that cannot return and that nothing calls) are in
  every slice's regions, so that a function gets the blocks of its cold part wherever
  they lie, as in one run; a cold part that a function of another slice took as blocks
  is not a function of its own (`lifting.angr_lift`);
- the small executable sections (.init, .plt, .plt.sec, .fini) are in every slice.

A function belongs to the slice its start is in. The slices depend on the binary only,
never on the number of processes, so the lift is the same however many ran it.

It is not always the lift of one whole-binary CFGFast: `bench/lift_slices.py` compares
them function by function (BENCHMARKS.md, "Parallel lift"). Known causes of the
differences:
- CFGFast leaves some functions' `returning` undecided within a slice and then counts any
  endpoint, a call to a function that never returns included, as a return; the callers
  then keep the block after such a call;
- angr's `Function.xrefs` also yields the references of the first instruction after
  each block that has any (an off-by-one in its range query), wherever it is; in a slice
  that instruction may be in code the slice does not see, so a referenced string can
  differ.

Only for x86 ELF whose .eh_frame covers the section: the `no_return` check reads x86
instructions, and without unwind entries neither the cuts nor the stubs are known.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# About this much of the section per slice (see slice_count). Each slice costs CFGFast
# some fixed work (libgio: ~7 s of CPU a slice, so 4 slices took 15% more CPU than 2).
SLICE_BYTES = 512 * 1024
MAX_SLICES = 16
MIN_UNWIND_COVER = 0.9  # of the section's bytes inside .eh_frame ranges
ARCHES = frozenset({"AMD64", "X86"})
# DW_CFA_def_cfa, _def_cfa_register, _def_cfa_offset, _def_cfa_expression, _def_cfa_sf,
# _def_cfa_offset_sf: an FDE that starts with one of these is entered mid-frame.
_CFA_MOVES = frozenset({0x0C, 0x0D, 0x0E, 0x0F, 0x12, 0x13})


@dataclass(frozen=True)
class SlicePlan:
    """How one binary's CFG is recovered in slices (angr addresses throughout)."""

    cuts: tuple[int, ...]  # slice i owns [cuts[i], cuts[i+1]); the first and last are open
    section: tuple[int, int]  # the executable section that is cut
    shared: tuple[tuple[int, int], ...]  # in every slice: small sections, cold parts
    # per slice: the function starts of other slices its code (or a cold part) calls or
    # jumps to directly, hooked while it is recovered
    reached: tuple[frozenset[int], ...]
    no_return: frozenset[int]  # function starts whose function cannot return

    def __len__(self) -> int:
        return len(self.cuts) + 1

    def owner(self, addr: int) -> int:
        return bisect.bisect_right(self.cuts, addr)

    def span(self, i: int) -> tuple[int, int]:
        """The part of the section slice i scans."""
        bounds = (self.section[0], *self.cuts, self.section[1])
        return bounds[i], bounds[i + 1]

    def foreign(self, i: int) -> list[int]:
        return sorted(self.reached[i])

    def regions(self, i: int) -> list[tuple[int, int]]:
        lo, hi = self.span(i)
        mine = [(lo, hi)] + [r for r in self.shared if not lo <= r[0] < hi]
        return sorted(mine + [(a, a + 1) for a in self.foreign(i)])


def slice_count(section_bytes: int, slice_bytes: int) -> int:
    """A power of two (so that 2, 4 or 8 processes share the slices evenly), at least 2;
    1 (no slicing) below half of slice_bytes."""
    if 2 * section_bytes < slice_bytes:
        return 1
    return min(MAX_SLICES, 2 ** max(1, round(math.log2(section_bytes / slice_bytes))))


def plan(project: Any, path: str, slice_bytes: int = SLICE_BYTES) -> SlicePlan | None:
    """The slices of this binary, or None where it is lifted in one CFGFast (small,
    not x86 ELF, or too little of it described by .eh_frame)."""
    obj = project.loader.main_object
    if project.arch.name not in ARCHES or obj.__class__.__name__ != "ELF":
        return None
    sections = sorted((s.min_addr, s.min_addr + min(s.memsize, s.filesize))
                      for s in obj.sections if s.is_executable)
    if not sections:
        return None
    section = max(sections, key=lambda r: r[1] - r[0])
    lo, hi = section
    count = slice_count(hi - lo, slice_bytes)
    if count < 2:
        return None
    entries = [(a, min(a + n, hi), cold)
               for a, n, cold in _unwind_entries(path, obj.mapped_base) if lo <= a < hi]
    if sum(min(end, hi) - a for a, end, _cold in entries) < MIN_UNWIND_COVER * (hi - lo):
        return None
    ranges = [(a, end) for a, end, _cold in entries]
    read = _sweep(project, ranges, {a for a, _end in ranges})
    # A cold part of a function without a frame (`push %rax; call abort`) starts with the
    # CFA of an entry; it never returns and nothing calls it: it is jumped to.
    cold = [(a, end) for a, end, is_cold in entries
            if is_cold or (a in read.no_return and a not in read.called)]
    cold_set = set(cold)
    hot = [r for r in ranges if r not in cold_set]
    start_set = {a for a, _end in hot}
    starts = sorted(start_set)
    cuts = _even_cuts(starts, [read.branches[a] + 1 for a in starts], count, lo)
    if not cuts:
        return None
    cold_targets = {t for a, _end in cold for t in read.targets[a]}
    reached = []
    for i in range(len(cuts) + 1):
        mine = {t for a, _end in hot if bisect.bisect_right(cuts, a) == i
                for t in read.targets[a]}
        # the next slice's first function, where a last block may run on into
        after = {cuts[i]} if i < len(cuts) else set()
        reached.append(frozenset(t for t in mine | cold_targets | after
                                 if t in start_set and bisect.bisect_right(cuts, t) != i))
    return SlicePlan(
        cuts=tuple(cuts), section=section,
        shared=tuple(sorted([r for r in sections if r != section] + cold)),
        reached=tuple(reached), no_return=frozenset(read.no_return & start_set),
    )


def _even_cuts(starts: list[int], weights: list[int], count: int, lo: int) -> list[int]:
    """Function starts that cut the section into `count` slices of about equal weight
    (CFGFast's work grows with the blocks, not the bytes: tar's first half by bytes,
    with main and the cold parts, took 15.5 s against 11.4 s)."""
    total = sum(weights)
    cuts, running, k = [], 0, 1
    for start, weight in zip(starts, weights, strict=True):
        if k < count and running + weight / 2 >= total * k / count:
            if start > lo:
                cuts.append(start)
            k += 1
        running += weight
    return cuts


@contextlib.contextmanager
def hooked(project: Any, plan: SlicePlan, i: int) -> Iterator[frozenset[int]]:
    """Stubs at the function starts of other slices that slice i reaches, for as long
    as it is recovered and lifted; yields their addresses (calls to them are not calls
    to imports)."""
    import angr

    class OtherSlice(angr.SimProcedure):
        """A function of another slice that returns."""

        def run(self) -> Any:  # never executed: CFGFast only reads NO_RET
            return self.state.solver.Unconstrained("ret", self.state.arch.bits)

    class OtherSliceNoReturn(OtherSlice):
        """A function of another slice that never returns."""

        NO_RET = True

    foreign = plan.foreign(i)
    for addr in foreign:
        project.hook(addr, OtherSliceNoReturn() if addr in plan.no_return else OtherSlice())
    try:
        yield frozenset(foreign)
    finally:
        for addr in foreign:
            project.unhook(addr)


def recover(project: Any, plan: SlicePlan, i: int) -> Any:
    """CFGFast of slice i, in a knowledge base of its own (call inside `hooked`)."""
    import angr

    return project.analyses.CFGFast(
        kb=angr.KnowledgeBase(project, name=f"slice{i}"), regions=plan.regions(i),
        normalize=True, data_references=True, show_progressbar=False,
        # What CFGFast picks by itself for regions of 50,000 bytes or more, as the whole
        # binary is; a slice's own size must not change it.
        indirect_calls_always_return=True, jumptable_resolver_resolves_calls=False,
    )


def _unwind_entries(path: str, base: int) -> list[tuple[int, int, bool]]:
    """(start, length, is a cold part) of each .eh_frame FDE, in angr's addresses."""
    from elftools.dwarf.callframe import FDE
    from elftools.elf.elffile import ELFFile

    out = []
    with open(path, "rb") as handle:
        try:
            elf = ELFFile(handle)
            if elf.get_section_by_name(".eh_frame") is None:
                return []
            for entry in elf.get_dwarf_info().EH_CFI_entries():
                if isinstance(entry, FDE):
                    first = next((ins.opcode for ins in entry.instructions), None)
                    out.append((entry.header["initial_location"] + base,
                                entry.header["address_range"], first in _CFA_MOVES))
        except Exception:  # pyelftools on crafted tables raises many types
            return []  # lift in one piece rather than guess
    return sorted(out)


@dataclass
class _Read:
    """What a linear read of the unwind ranges found, by range start."""

    targets: dict[int, set[int]]  # function starts each range calls or jumps to
    branches: dict[int, int]  # jumps, calls and returns in each range: its blocks, roughly
    no_return: set[int]  # ranges that cannot return
    called: set[int]  # what something calls directly


def _sweep(project: Any, ranges: list[tuple[int, int]], starts: set[int]) -> _Read:
    """Read each unwind range with capstone, in a straight line.

    A function cannot return when its range holds no `ret`, and its jumps out of the
    range go only to such functions; a jump to anything else (an import, an indirect
    target) is taken to return, as CFGFast takes an unknown callee."""
    md = project.arch.capstone
    read = _Read({}, {}, set(), set())
    tails: dict[int, set[int]] = {}
    returns: set[int] = set()
    for lo, hi in ranges:
        reached, out = read.targets.setdefault(lo, set()), tails.setdefault(lo, set())
        branches = 0
        data = project.loader.memory.load(lo, hi - lo)
        for _addr, _size, mnemonic, operand in md.disasm_lite(data, lo):
            word = mnemonic.split()[-1] if mnemonic else ""
            if word.startswith("ret"):
                returns.add(lo)
                branches += 1
            elif word.startswith("j") or word == "call":
                branches += 1
                try:
                    target = int(operand, 16)
                except ValueError:  # indirect: a table or a tail call through a pointer
                    if word.startswith("j"):
                        returns.add(lo)
                    continue
                if target in starts:
                    reached.add(target)
                if word == "call":
                    read.called.add(target)
                if word != "call" and not lo <= target < hi:
                    out.add(target)
        read.branches[lo] = read.branches.get(lo, 0) + branches
    changed = True
    while changed:
        changed = False
        for lo, jumps in tails.items():
            if lo not in returns and any(t in returns or t not in starts for t in jumps):
                returns.add(lo)
                changed = True
    read.no_return = {lo for lo, _hi in ranges} - returns
    return read
