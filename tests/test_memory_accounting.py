"""What the memory work for issue 10 relies on, checked on real processes and real scans:

* the window benchmark's sampler (benchmarks/bench_gui_memory.py) reads RSS, PSS and USS of
  a real process from ``/proc`` as psutil does, counts each process of a tree once, and
  leaves out a child forked but not yet exec-ed (it shares its parent's memory: counting it
  once read a 229 MB batch process as 458 MB); with each mapped file counted once, two
  processes of the same interpreter hold their libraries once;
* ONNX Runtime sessions take their CPU memory from the process's one shared arena, with the
  very outputs of a session that allocates run by run;
* the batch process does not import ``requests`` (pydicom would, for its test-data
  downloads only).

No figure of the app's memory is asserted here: the benchmarks print those.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from desktop.engine.batch_process import NOT_IN_BATCH_PROCESS, BatchProcess
from desktop.engine.inference import Device, create_session, shared_cpu_arena
from desktop.engine.loading import read_file
from desktop.engine.manifest import load_verified_model, read_manifest
from desktop.engine.preprocess import decode_working, expand_channels
from desktop.engine.registry import load_model_set
from desktop.engine.screening import Screener
from desktop.engine.store import ResultsStore
from tests.batch_probe import ImportsTask
from tests.conftest import DATA, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_gui_memory as bench

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/smaps_rollup").exists(), reason="Linux /proc/PID/smaps_rollup"
)

MODELS = REPO / "assets" / "models"

#: A process that holds 48 MB of its own (written, so resident), then waits for its stdin.
_HOLDER = "import sys; block = bytearray(48 << 20); print('ready', flush=True); sys.stdin.read()"

#: A process with three children: one forked and never exec-ed, one program (sleep), one
#: multiprocessing ``spawn`` child (as the window starts its batch process).
_PARENT = textwrap.dedent(
    """
    import multiprocessing, os, signal, subprocess, sys, time
    if __name__ == "__main__":
        forked = os.fork()
        if forked == 0:
            time.sleep(60)
            os._exit(0)
        program = subprocess.Popen(["sleep", "60"])
        spawned = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,))
        spawned.start()
        # multiprocessing returns before its children (the spawned one, the resource
        # tracker) have exec-ed; until then they show this command line and the sampler
        # rightly leaves them out, so wait for them (the forked copy never execs)
        own = open("/proc/self/cmdline", "rb").read()
        def execed(pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    return f.read() != own
            except OSError:
                return True
        me = os.getpid()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(f"/proc/{me}/task/{me}/children") as f:
                kids = [int(k) for k in f.read().split()]
            if len(kids) >= 4 and all(execed(k) for k in kids if k != forked):
                break
            time.sleep(0.01)
        print(forked, program.pid, spawned.pid, flush=True)
        sys.stdin.read()
        os.kill(forked, signal.SIGKILL)
        program.kill()
        spawned.kill()
        os.waitpid(forked, 0)
        program.wait()
        spawned.join()
    """
)


@pytest.fixture
def holder():
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    proc.communicate("", timeout=30)


def test_the_sampler_reads_pss_and_uss_of_a_real_process_as_psutil_does(holder):
    memory = bench.read_memory(holder.pid)
    assert memory is not None
    # Its 48 MB are its own: in its USS; shared library pages make RSS >= PSS >= USS.
    assert memory.rss >= memory.pss >= memory.uss >= 48
    psutil = pytest.importorskip("psutil")
    full = psutil.Process(holder.pid).memory_full_info()
    assert abs(full.pss / 2**20 - memory.pss) < 1.0
    assert abs(full.uss / 2**20 - memory.uss) < 1.0
    assert abs(full.rss / 2**20 - memory.rss) < 1.0


def test_the_files_of_a_tree_are_counted_once_and_its_anonymous_memory_summed(holder):
    other = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        alone = [bench.files_counted_once([pid]) for pid in (holder.pid, other.pid)]
        for (anon, files), pid in zip(alone, (holder.pid, other.pid), strict=True):
            memory = bench.read_memory(pid)
            assert memory is not None and abs(anon + files - memory.rss) < 1.0
            assert anon >= 48  # each one's own block
        anon, files = bench.files_counted_once([holder.pid, other.pid])
        assert abs(anon - sum(a for a, _ in alone)) < 1.0
        # The same interpreter and libraries: counted once, not twice.
        assert max(f for _, f in alone) <= files + 0.5 < sum(f for _, f in alone)
    finally:
        other.communicate("", timeout=30)


def test_a_process_gone_reads_as_none_and_a_text_without_pss_is_refused(holder):
    holder.communicate("", timeout=30)
    assert bench.read_memory(holder.pid) is None
    with pytest.raises(ValueError, match="Rss/Pss"):
        bench.parse_smaps_rollup("Rss:   100 kB\n")
    text = Path("/proc/self/smaps_rollup").read_text(encoding="ascii")
    own = bench.parse_smaps_rollup(text)
    assert own.rss >= own.pss >= own.uss > 0


def test_the_tree_counts_each_process_once_and_leaves_out_a_child_not_yet_exec_ed():
    proc = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        forked, program, spawned = (int(x) for x in proc.stdout.readline().split())
        tree = bench.process_tree(proc.pid)
        assert tree.roles[proc.pid] == bench.WINDOW
        assert tree.roles[spawned] == bench.BATCH
        assert tree.roles[program] == bench.OTHER
        # The forked copy still runs its parent's command line: left out, parent named.
        assert forked not in tree.roles and tree.forking == [bench.WINDOW]
        # Besides those: multiprocessing's resource tracker, another program.
        others = set(tree.roles) - {proc.pid, spawned, program}
        assert len(others) == 1 and tree.roles[others.pop()] == bench.OTHER
        sample = bench.sample(proc.pid)
        assert sample.forking == [bench.WINDOW]
        total = sum((sample.by_role[r] for r in bench.ROLES), bench.ZERO)
        assert sample.total == total and sample.by_role[bench.BATCH].pss > 0
    finally:
        proc.communicate("", timeout=30)


def _images() -> np.ndarray:
    """Real chest X-rays (NLM PNG, Kermany JPEG) prepared as the app does for the TB model."""
    folders = ("tb/normal", "tb/tuberculosis", "pneumonia/normal", "pneumonia/pneumonia")
    files = [p for sub in folders for p in sorted((DATA / sub).iterdir())[:2]]
    screener = Screener(load_model_set([MODELS], Device.CPU))
    spec = read_manifest(MODELS / "tb.json").preprocessing
    prepared = [screener.prepare(decode_working(f, *read_file(f))) for f in files]
    return expand_channels(np.stack([p.planes[spec] for p in prepared]), 3)


def test_sessions_use_the_shared_arena_with_the_outputs_of_run_by_run_allocation():
    model = load_verified_model(read_manifest(MODELS / "tb.json"))
    session, report = create_session(model, "tb", Device.CPU, threads=1)
    assert shared_cpu_arena() and report.provider == "CPUExecutionProvider"
    options = session.get_session_options()
    assert options.get_session_config_entry("session.use_env_allocators") == "1"
    assert options.enable_cpu_mem_arena and not options.enable_mem_pattern
    plain = ort.SessionOptions()
    plain.enable_cpu_mem_arena = False  # the options before: malloc run by run
    plain.intra_op_num_threads = 1
    before = ort.InferenceSession(model, sess_options=plain, providers=["CPUExecutionProvider"])
    x = _images()
    for start, size in ((0, 1), (1, 2), (3, 5), (0, 8)):
        batch = x[start : start + size]
        outputs = [o.name for o in session.get_outputs()]
        for now, then in zip(
            session.run(outputs, {"image": batch}),
            before.run(outputs, {"image": batch}),
            strict=True,
        ):
            assert np.array_equal(now, then)
    # Real scores: the two TB-positive adults above the two normal adults.
    scores = session.run(["probabilities"], {"image": x})[0][:, 1]
    assert min(scores[2:4]) > max(scores[0:2])


def test_the_batch_process_leaves_out_requests(stand_in_models: Path, tmp_path: Path):
    assert NOT_IN_BATCH_PROCESS == ("requests",)
    store = ResultsStore(tmp_path / "results.sqlite3")
    store.close()
    gen = BatchProcess(load_model_set([stand_in_models]), store.path, task=ImportsTask()).run()
    with pytest.raises(StopIteration) as stop:
        next(gen)
    # pydicom (whose data module tries requests) is loaded; requests is not importable there.
    assert stop.value.value == {"pydicom": True, "requests refused": True}
