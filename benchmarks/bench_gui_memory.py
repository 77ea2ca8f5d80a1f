"""Peak memory of the window, and of its batch process, when a clinic screens a big folder.

``bench_memory.py`` measures ``medscreen classify``; this measures what a user of the window
does with the same corpus (unique copies of the small real NLM chest X-ray PNGs, built by
``bench_memory.build``): drop the folder on the window (the real MainWindow, offscreen, the
shipped models), wait for the batch to finish, export the PDF and CSV report from the window
(``MainWindow.export_report``, what *Export report…* runs), then browse the table: sort it
by several columns both ways, scroll it from top to bottom a page at a time (every row's
thumbnail is painted once) and press F3 through flagged scans. Last, change the operating
point twice and the patient group once: each re-derives every row from the store, and the
script prints how long the call blocked, when the counts were up to date and the longest
event-loop gap (a 10 ms timer's) meanwhile.

Each size runs in a fresh process. This script samples, every 0.1 s, the window process, its
batch process and anything else the window started (multiprocessing's resource tracker,
before the batch process was started without multiprocessing), each read from
``/proc/PID/smaps_rollup`` one after the other at each sample, and prints per phase the
peaks of each and of their sum at one moment, as RSS, PSS and USS.
RSS counts a page of a shared library in every process that maps it, so a sum of RSS
counts libpython's or NumPy's pages twice; PSS divides each page among the processes that
map it (so it also falls when a process outside the tree maps the same libraries: the
script says how many did); USS is what each holds alone. Every 1 s it also reads every
mapping (``/proc/PID/smaps``) and counts the tree's memory with each file counted once
(anonymous memory summed, each file's resident pages at their largest in any one process),
which other processes do not move. A child counted twice (listed by two threads) counts
once, and a child forked but not yet exec-ed is left out (a ``vfork``-ed ``ldconfig``
shares its parent's whole memory until its exec: counted, it once made a 229 MB batch
process read 458 MB). The window process prints its own kernel high-water mark (``VmHWM``)
after each phase, its joined children's (``RUSAGE_CHILDREN`` ``ru_maxrss``: the batch
process's exact peak), which the 0.1 s samples can miss by a little, and its memory after
the report before and after a ``malloc_trim(0)``.

``--trace`` also starts tracemalloc in the window process before the drop and prints the
Python heap it holds after the batch per scan (and its largest allocation sites): a heap that
grows with the scans is what the window keeps per row; and again over the report: its Python
heap peak and what is still held after it.

Usage: ``python benchmarks/bench_gui_memory.py [--sizes 1000,20000] [--keep DIR] [--trace]``.
Linux only (``/proc``). It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_memory import build, sources  # noqa: E402
from event_gaps import EventLoopGaps  # noqa: E402

PHASES = ("start", "screen", "report", "browse", "rederive")


# -- the sampler (this process) --------------------------------------------------------------
#: What each process is to this benchmark: the window (the root), its batch process (a
#: ``desktop.engine.child_process`` child, or a multiprocessing ``spawn`` child as it was
#: before 2 December 2026), anything else it started (multiprocessing's resource tracker
#: then, decoder sandboxes, a short-lived helper such as ``ldconfig``).
WINDOW, BATCH, OTHER = "window", "batch", "other"
ROLES = (WINDOW, BATCH, OTHER)


@dataclass(frozen=True)
class Memory:
    """One process's memory from ``/proc/PID/smaps_rollup``, in MB.

    ``rss`` counts every resident page it maps, so two processes that map the same shared
    library pages (libpython, NumPy's, SQLite's) each count them whole: a sum of RSS
    overstates what two processes use together. ``pss`` (proportional set size) divides each
    page by the number of processes mapping it, so the PSS of a tree sums to what the tree
    really holds. ``uss`` (private clean + private dirty) is what the process alone holds:
    what its end would give back.
    """

    rss: float
    pss: float
    uss: float

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss + other.rss, self.pss + other.pss, self.uss + other.uss)

    def peak(self, other: Memory) -> Memory:
        """Each figure's maximum (each may peak at a different moment)."""
        return Memory(max(self.rss, other.rss), max(self.pss, other.pss), max(self.uss, other.uss))


ZERO = Memory(0.0, 0.0, 0.0)


def parse_smaps_rollup(text: str) -> Memory:
    """``/proc/PID/smaps_rollup``'s text as a :class:`Memory` (its fields are in kB)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0])
    if "Rss" not in fields or "Pss" not in fields:
        raise ValueError("no Rss/Pss in the smaps_rollup text")
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    private += fields.get("Private_Hugetlb", 0)
    return Memory(fields["Rss"] / 1024, fields["Pss"] / 1024, private / 1024)


def read_memory(pid: int) -> Memory | None:
    """The process's :class:`Memory` now, or None once it has gone (or may not be read)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            return parse_smaps_rollup(rollup.read())
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                kids.extend(int(k) for k in f.read().split())
        except (OSError, ValueError):
            continue
    return kids


@dataclass
class Tree:
    """The processes under a root at one moment: ``roles`` maps each counted pid to its
    role; ``forking`` names the role of the parent of each child left out because it had
    not run ``exec`` yet."""

    roles: dict[int, str] = field(default_factory=dict)
    forking: list[str] = field(default_factory=list)


def process_tree(root: int) -> Tree:
    """The root and every descendant, each once, with its role.

    Left out: a child whose command line is still its parent's, i.e. forked (or vforked)
    but not yet ``exec``-ed. Python's ``subprocess`` starts a program with ``vfork``, so
    until its ``exec`` the child *shares* the parent's address space and its ``/proc``
    figures are the parent's whole memory again: summing it counted a process twice (the
    batch process runs ``ldconfig -p`` through ``ctypes.util.find_library`` at every
    ``malloc_trim``, which is how a tree of a 229 MB batch process once read 458 MB).
    A child met twice (a thread's children listed again while they are re-parented to
    another thread of the same process) is counted once.
    """
    tree = Tree({root: WINDOW})
    seen = {root}
    stack = [(root, _cmdline(root))]
    while stack:
        parent, parent_cmd = stack.pop()
        for kid in _children(parent):
            if kid in seen:
                continue
            seen.add(kid)
            cmd = _cmdline(kid)
            if cmd is None:  # gone already
                continue
            if cmd == parent_cmd:
                tree.forking.append(tree.roles[parent])
                continue
            is_batch = parent == root and is_batch_process(cmd)
            tree.roles[kid] = BATCH if is_batch else OTHER
            stack.append((kid, cmd))
    return tree


def is_batch_process(cmdline: bytes) -> bool:
    """Whether a ``/proc/PID/cmdline`` is the window's batch process: a child started by
    :mod:`desktop.engine.child_process` for ``batch`` (``python -c ... batch``, or the
    frozen app's ``--medscreen-child batch``), or a multiprocessing ``spawn`` child (how the
    batch process was started before)."""
    args = cmdline.split(b"\0")
    if args and args[-1] == b"":
        args.pop()
    if b"spawn_main" in cmdline:
        return True
    if len(args) < 2 or args[-1] != b"batch":
        return False
    return args[-2] == b"--medscreen-child" or any(
        b"desktop.engine.child_process" in arg for arg in args[:-1]
    )


def files_counted_once(pids: list[int]) -> tuple[float, float]:
    """The tree's resident memory with each mapped file counted once, in MB: (anonymous
    memory summed over the processes, file-backed resident memory per file at its largest in
    any one of them, summed over the files), from ``/proc/PID/smaps``.

    Anonymous pages are private here (nothing forks without exec), so their sum is exact; a
    file's pages are those of one page cache, and what two processes touch of libpython or
    NumPy is mostly the same pages, so the largest of them is close to (at least) their
    union. Unlike PSS, this does not fall when a process outside the tree maps the same
    libraries."""
    anon = 0
    files: dict[str, int] = {}
    for pid in pids:
        own: dict[str, int] = {}
        name, rss = "", 0
        try:
            with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as smaps:
                for line in smaps:
                    head, _, rest = line.partition(":")
                    if head == "Rss":
                        rss = int(rest.split()[0])
                    elif head == "Anonymous":
                        kb = int(rest.split()[0])
                        anon += kb
                        if name:
                            own[name] = own.get(name, 0) + rss - kb
                    elif " " in head or "-" in head:  # a mapping's header line
                        parts = line.split(maxsplit=5)
                        path = parts[5].strip() if len(parts) > 5 else ""
                        name = path if path.startswith("/") else ""
        except (OSError, ValueError, IndexError):
            continue
        for path, kb in own.items():
            files[path] = max(files.get(path, 0), kb)
    return anon / 1024, sum(files.values()) / 1024


@dataclass
class Sample:
    """The tree's memory at one moment: per role (summed over its processes) and in all;
    ``once`` is :func:`files_counted_once` of the tree when it was read this time."""

    by_role: dict[str, Memory]
    total: Memory
    forking: list[str]
    seconds: float  # how long reading every process took (how "one moment" it was)
    once: tuple[float, float] | None = None


def sample(root: int, once: bool = False) -> Sample:
    """Read the whole tree once, process after process, as close together as possible
    (``once``: also its files counted once, which reads every mapping and takes longer)."""
    t0 = time.perf_counter()
    tree = process_tree(root)
    by_role = dict.fromkeys(ROLES, ZERO)
    total = ZERO
    for pid, role in tree.roles.items():
        memory = read_memory(pid)
        if memory is None:
            continue
        by_role[role] = by_role[role] + memory
        total = total + memory
    counted = files_counted_once(list(tree.roles)) if once else None
    return Sample(by_role, total, tree.forking, time.perf_counter() - t0, counted)


@dataclass
class PhasePeaks:
    """Peaks over a phase: per role and of the tree's sum, each figure taken at the sample
    where it was highest (the sum's peak is a peak of sums taken at one moment, not a sum
    of peaks), and the roles' PSS at the sample where the tree's PSS peaked."""

    by_role: dict[str, Memory] = field(default_factory=lambda: dict.fromkeys(ROLES, ZERO))
    total: Memory = ZERO
    at_pss_peak: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    forking: list[str] = field(default_factory=list)
    slowest: float = 0.0
    once: tuple[float, float] = (0.0, 0.0)  # (anonymous, files once) where their sum peaked
    once_rss: float = 0.0  # the tree's RSS sum at that same sample

    def add(self, s: Sample) -> None:
        if s.once is not None and sum(s.once) > sum(self.once):
            self.once, self.once_rss = s.once, s.total.rss
        for role in ROLES:
            self.by_role[role] = self.by_role[role].peak(s.by_role[role])
        if s.total.pss > self.total.pss:
            self.at_pss_peak = {role: s.by_role[role].pss for role in ROLES}
        self.total = self.total.peak(s.total)
        self.samples += 1
        self.forking.extend(s.forking)
        self.slowest = max(self.slowest, s.seconds)


#: Shared libraries whose pages the tree's PSS shares with any other process mapping them.
SHARED_LIBS = ("libpython3", "onnxruntime_pybind11", "libQt6Core", "_multiarray_umath")


def outside_sharers(root: int) -> dict[str, int]:
    """How many processes outside the tree map each of :data:`SHARED_LIBS` now.

    PSS divides a page among *every* process that maps it, not only the tree's: another
    Python with ONNX Runtime running (a test suite) lowers the tree's PSS by its share of
    those libraries' pages. Printed with the figures, so a PSS can be read with that."""
    tree = set(process_tree(root).roles)
    counts = dict.fromkeys(SHARED_LIBS, 0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in tree:
            continue
        try:
            with open(f"/proc/{entry}/maps", encoding="ascii", errors="replace") as maps:
                text = maps.read()
        except OSError:
            continue
        for lib in SHARED_LIBS:
            counts[lib] += lib in text
    return counts


def measure(folder: Path, work: Path, trace: bool) -> None:
    """Run the window on ``folder`` in a fresh process and print the peaks per phase."""
    cmd = [sys.executable, __file__, "--window", str(folder), "--work", str(work)]
    cmd += ["--trace"] if trace else []
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    phase = ["start"]
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            match = re.match(r"PHASE (\w+)", line)
            if match:
                phase[0] = match.group(1)
            elif not line.startswith("PHASE"):
                print("   |", line.rstrip(), flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peaks = {p: PhasePeaks() for p in PHASES}
    load_max = 0.0
    sharers: dict[str, int] = {}
    n = 0
    last_phase = ""
    while proc.poll() is None:
        if phase[0] != last_phase:  # at each phase's start: who else maps the libraries
            last_phase = phase[0]
            for lib, n in outside_sharers(proc.pid).items():
                sharers[lib] = max(sharers.get(lib, 0), n)
        s = sample(proc.pid, once=n % 10 == 0)
        n += 1
        if proc.poll() is not None:  # the window ended mid-sample: its figures are partial
            break
        peaks.setdefault(phase[0], PhasePeaks()).add(s)
        load_max = max(load_max, os.getloadavg()[0])
        time.sleep(0.1)
    reader.join()
    if proc.returncode != 0:
        print("\n".join(lines[-40:]))
        raise RuntimeError(f"the window run failed with status {proc.returncode}")
    print(
        f"  sampled peaks every 0.1 s, {time.perf_counter() - started:.0f} s in all, load "
        f"average up to {load_max:.1f}; MB as RSS / PSS / USS; 'tree' is the sum over the "
        f"window, its batch process and the rest, read together at each sample:"
    )
    print(
        f"    {'phase':<8} {'window':>17}  {'batch process':>17}  {'other':>17}  "
        f"{'tree (sum)':>17}  tree PSS peak = window + batch + other"
    )
    for name in PHASES:
        p = peaks[name]
        cells = [p.by_role[r] for r in ROLES] + [p.total]
        row = "  ".join(f"{m.rss:5.0f}/{m.pss:5.0f}/{m.uss:5.0f}" for m in cells)
        split = " + ".join(f"{p.at_pss_peak.get(r, 0.0):.0f}" for r in ROLES)
        print(f"    {name:<8} {row}  {split}")
    print(
        "    the tree with each mapped file counted once (every 1 s; anonymous memory summed +"
        " files at their largest in any one process; the RSS sum at that sample):"
    )
    for name in PHASES:
        anon, files = peaks[name].once
        if not peaks[name].once_rss:  # a phase shorter than 1 s may have no such reading
            print(f"    {name:<8} (not read in this phase)")
            continue
        print(
            f"    {name:<8} {anon + files:5.0f} = {anon:5.0f} + {files:5.0f}   "
            f"(RSS sum {peaks[name].once_rss:5.0f})"
        )
    print(
        "    processes outside the tree mapping the same libraries (most at a phase's start; "
        "they lower the tree's PSS): " + ", ".join(f"{k} {v}" for k, v in sharers.items())
    )
    forks = [role for p in peaks.values() for role in p.forking]
    slowest = max(p.slowest for p in peaks.values())
    samples = sum(p.samples for p in peaks.values())
    print(
        f"    {samples} samples, the slowest read of the tree {slowest * 1000:.0f} ms; "
        f"{len(forks)} child(ren) met forked but not yet exec-ed, left out (one shares its "
        f"parent's memory until then), by the parent: "
        f"{', '.join(f'{r} {forks.count(r)}' for r in ROLES if r in forks) or 'none'}"
    )


# -- the window (a fresh process) -----------------------------------------------------------
def _hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _malloc_heap() -> str:
    """glibc's heap arenas now (``mallinfo2``, all arenas): what is in use and what is freed
    but kept, in MB; empty where there is no ``mallinfo2`` (glibc before 2.33, not glibc)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in [
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            ]
        ]

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return ""
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return (
        f"; glibc heap {info.uordblks / 2**20:.0f} MB in use, {info.fordblks / 2**20:.0f} MB"
        f" freed and kept, {info.hblkhd / 2**20:.0f} MB mmapped"
    )


def _now() -> str:
    """This process's memory now: RSS / PSS / USS and its anonymous (heap) part, in MB."""
    memory = read_memory(os.getpid())
    anon, _files = files_counted_once([os.getpid()])
    if memory is None:
        return "unreadable"
    return (
        f"now {memory.rss:.0f} / {memory.pss:.0f} / {memory.uss:.0f} MB, anonymous {anon:.0f}"
        + _malloc_heap()
    )


def _trim() -> None:
    """glibc's malloc_trim(0), as the engine calls it (measures what it would return)."""
    from desktop.engine.cores import release_free_memory

    release_free_memory()


def _phase(name: str) -> None:
    print(f"PHASE {name}", flush=True)


def window_run(folder: Path, work: Path, trace: bool) -> int:
    """Screen ``folder`` in the real window, export its report, browse the table."""
    import resource
    import tracemalloc

    os.environ["MEDSCREEN_HOME"] = str(work / "home")
    from PySide6.QtCore import QEventLoop, Qt, QTimer
    from PySide6.QtWidgets import QApplication

    from desktop.engine.store import ResultsStore
    from desktop.gui.app import create_app
    from desktop.gui.main_window import MainWindow
    from desktop.gui.results_model import Column
    from desktop.gui.settings import AppSettings

    app = create_app(["bench"])
    assert isinstance(app, QApplication)
    window = MainWindow(
        settings=AppSettings(work / "settings.ini"),
        store=ResultsStore(work / "results.sqlite3"),
        model_dirs=[REPO / "assets" / "models"],
    )
    window.resize(1366, 768)
    window.show()

    def wait_for(signal: object, seconds: float) -> None:
        loop = QEventLoop()
        signal.connect(lambda *_a: loop.quit())  # type: ignore[attr-defined]
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()

    loop = QEventLoop()
    window.models_changed.connect(lambda _m: loop.quit())
    window.start()
    loop.exec()
    if window.models is None:
        print("the shipped models did not load", flush=True)
        return 1
    print(f"window ready (models loaded): VmHWM {_hwm_mb():.0f} MB", flush=True)

    _phase("screen")
    if trace:
        tracemalloc.start(8)
    t0 = time.perf_counter()
    done = QEventLoop()
    window.batch.batch_finished.connect(lambda *_a: done.quit())
    window.batch.batch_failed.connect(lambda *_a: done.quit())
    window.open_paths([folder])
    QTimer.singleShot(3_600_000, done.quit)  # never wait forever
    done.exec()
    window.batch.wait()
    app.processEvents()
    rows = window.model.rowCount()
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"screened {rows} rows in {time.perf_counter() - t0:.0f} s; window VmHWM "
        f"{_hwm_mb():.0f} MB, batch process peak (ru_maxrss) {child:.0f} MB; "
        f"{window.model.counts().flagged_any} flagged",
        flush=True,
    )
    if trace:
        # imports and linecache (tracemalloc's own tracebacks) are not the rows': left out
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [
                tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
                tracemalloc.Filter(False, "*/linecache.py"),
                tracemalloc.Filter(False, "<frozen abc>"),
            ]
        )
        stats = snapshot.statistics("lineno")
        held = sum(stat.size for stat in stats)
        print(
            f"tracemalloc after the batch, imports left out: {held / 2**20:.1f} MB held "
            f"({held / max(1, rows):.0f} B a scan); the window's VmHWM above includes "
            f"tracemalloc's own overhead",
            flush=True,
        )
        for stat in stats[:8]:
            print(f"  {stat.size / 2**20:7.2f} MB {stat.count:8d}  {stat.traceback[0]}")
        tracemalloc.stop()

    print(f"window after screening: {_now()}", flush=True)
    _phase("report")
    if trace:
        tracemalloc.start(8)
    t0 = time.perf_counter()
    out = work / "reports"
    out.mkdir(exist_ok=True)
    worker = window.export_report(out / "report.pdf")
    if worker is None:
        print("export refused", flush=True)
        return 1
    wait_for(window.export_done, 1800)
    written = sorted(out.iterdir())
    size = sum(p.stat().st_size for p in written) / 2**20
    print(
        f"report: {len(written)} files, {size:.1f} MB in {time.perf_counter() - t0:.0f} s; "
        f"window VmHWM {_hwm_mb():.0f} MB",
        flush=True,
    )
    if trace:
        _report_trace()
    app.processEvents()
    print(f"window after the report: {_now()}", flush=True)
    _trim()
    print(f"window after the report and a malloc_trim(0): {_now()}", flush=True)

    _phase("browse")
    t0 = time.perf_counter()
    view = window.view
    model = window.model
    sorts: list[str] = []
    for column in (
        model.column_of(Column.SCORE, model.finding_ids()[0]),
        model.column_of(Column.FILE),
        model.column_of(Column.STATUS),
        model.column_of(Column.TRIAGE),
    ):
        for order in (Qt.SortOrder.DescendingOrder, Qt.SortOrder.AscendingOrder):
            gap = _longest_gap(app, lambda c=column, o=order: view.sortByColumn(c, o))
            sorts.append(f"{model.column_kind(column).value} {order.name[:-5].lower()} {gap:.2f}")
    print(
        f"explicit sorts of {model.rowCount()} rows, longest event-loop gap each (s): "
        + ", ".join(sorts),
        flush=True,
    )
    bar = view.verticalScrollBar()
    bar.setValue(0)
    pages = 0
    while True:  # every row painted once, a page at a time, as a user dragging down would
        view.viewport().repaint()
        app.processEvents()
        pages += 1
        if bar.value() >= bar.maximum():
            break
        bar.setValue(bar.value() + bar.pageStep())
    for _ in range(50):
        window.goto_flagged(1)
        app.processEvents()
    print(
        f"browsed: 8 sorts, {pages} pages scrolled, 50 x F3 in {time.perf_counter() - t0:.0f}"
        f" s; window VmHWM {_hwm_mb():.0f} MB",
        flush=True,
    )

    _phase("rederive")
    from desktop.engine.patients import PatientChoice, PatientGroup
    from desktop.engine.results import ThresholdChoice

    for label, change in (
        ("operating point -> custom 0.5", lambda: model.set_choice(ThresholdChoice(threshold=0.5))),
        ("operating point -> default", lambda: model.set_choice(ThresholdChoice())),
        (
            "patient group -> adults",
            lambda: model.set_patients(PatientChoice(batch=PatientGroup.ADULT)),
        ),
    ):
        _rederive(app, model, label, change)
    print(f"after the re-derivations: window VmHWM {_hwm_mb():.0f} MB, {_now()}", flush=True)
    window.close()
    app.processEvents()
    return 0


def _longest_gap(app: object, action: object) -> float:
    """The longest an event loop running ``action`` (then the events it queued) went
    without a turn: a 10 ms timer's largest gap, the call itself counted as one gap."""
    with EventLoopGaps(app) as gaps:
        action()  # type: ignore[operator]
        gaps.tick()
        gaps.settle()
    return gaps.longest


def _report_trace() -> None:
    """The Python heap the report phase peaked at and what of it is still held (tracemalloc,
    started as the export began): whether the report's growth is Python objects, and kept."""
    import tracemalloc

    now, peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
            tracemalloc.Filter(False, "*/linecache.py"),
            tracemalloc.Filter(False, "*/tracemalloc.py"),
        ]
    )
    tracemalloc.stop()
    print(
        f"tracemalloc over the report: Python heap peak {peak / 2**20:.1f} MB, "
        f"{now / 2**20:.1f} MB still held after it (imports included); largest held:",
        flush=True,
    )
    for stat in snapshot.statistics("lineno")[:6]:
        print(f"  {stat.size / 2**20:7.2f} MB {stat.count:8d}  {stat.traceback[0]}", flush=True)


def _rederive(app: object, model: object, label: str, change: object) -> None:
    """Time a re-derivation of every row (a new operating point or patient group) as the
    user meets it: how long the call blocks, when the counts are up to date, and the
    longest the event loop went without a turn (a 10 ms timer's largest gap)."""
    from PySide6.QtCore import QEventLoop

    with EventLoopGaps(app) as gaps:
        cpu0 = time.process_time()
        t0 = gaps.restart()
        change()  # type: ignore[operator]
        call = time.perf_counter() - t0
        gaps.tick()
        if model.derivation_pending():  # type: ignore[attr-defined]
            loop = QEventLoop()
            model.derived.connect(loop.quit)  # type: ignore[attr-defined]
            loop.exec()
            gaps.tick()
    print(
        f"re-derived ({label}): the call blocked {call:.2f} s, counts up to date after "
        f"{time.perf_counter() - t0:.2f} s ({time.process_time() - cpu0:.2f} s CPU), longest "
        f"event-loop gap {gaps.longest:.2f} s; {model.counts().flagged_any} flagged",  # type: ignore[attr-defined]
        flush=True,
    )


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--keep", type=Path, default=None, help="build/reuse folders here")
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the window")
    parser.add_argument("--window", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.window is not None:
        return window_run(args.window, args.work, args.trace)
    root = args.keep or Path(tempfile.mkdtemp(prefix="medscreen-guimem-"))
    print(
        f"cores: {len(os.sched_getaffinity(0))}; scans: {len(sources())} real 299x299 chest "
        f"X-ray PNGs, copied; window offscreen, shipped models; uptime: {_uptime()}",
        flush=True,
    )
    for size in [int(s) for s in args.sizes.split(",") if s]:
        folder = root / f"scans_{size}"
        if not folder.is_dir():
            build(folder, size)
        work = Path(tempfile.mkdtemp(prefix=f"run_{size}_", dir=root))
        print(f"{size:,} scans:", flush=True)
        measure(folder, work, args.trace)
        print(f"  uptime: {_uptime()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
