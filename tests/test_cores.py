"""The core budget that decoder and inference threads share (desktop/engine/cores.py)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from desktop.engine.cores import CoreBudget, available_cores
from desktop.engine.inference import default_threads, inference_slots


def test_available_cores_follows_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    assert available_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cores", "slots", "threads"), [(1, 1, 1), (2, 2, 1), (4, 4, 1), (8, 4, 2), (16, 4, 4)]
)
def test_inference_slots_times_threads_never_exceed_the_cores(cores, slots, threads):
    assert inference_slots(cores) == slots and default_threads(cores) == threads
    assert inference_slots(cores) * default_threads(cores) <= cores


def test_no_more_tasks_run_at_once_than_cores():
    budget = CoreBudget(2)
    lock = threading.Lock()
    running = high = 0

    def task(n: int) -> None:
        nonlocal running, high
        with budget.use(n) as held:
            with lock:
                running += held
                high = max(high, running)
            time.sleep(0.005)
            with lock:
                running -= held

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(task, [1, 2, 1, 1, 3, 1, 2, 1] * 4))  # 3 is capped at the budget's 2
    assert high == 2 and budget.free == 2


def test_urgent_user_gets_the_next_free_core_before_waiting_decoders():
    budget = CoreBudget(1)
    order: list[str] = []
    release = threading.Event()

    def holder() -> None:
        with budget.use():
            release.wait(5)

    def user(name: str, urgent: bool) -> None:
        with budget.use(urgent=urgent):
            order.append(name)

    first = threading.Thread(target=holder)
    first.start()
    while budget.free:
        time.sleep(0.001)
    decoders = [threading.Thread(target=user, args=(f"decode{i}", False)) for i in range(3)]
    for t in decoders:
        t.start()
    time.sleep(0.05)  # the decoders are waiting before inference asks
    infer = threading.Thread(target=user, args=("infer", True))
    infer.start()
    while not budget._urgent_waiting:  # wait until it is really queued
        time.sleep(0.001)
    release.set()
    for t in (first, infer, *decoders):
        t.join(5)
    assert order[0] == "infer" and sorted(order[1:]) == ["decode0", "decode1", "decode2"]


def test_a_spare_task_runs_beside_the_cores_and_the_stages_stay_per_core(
    stand_in_models: Path, tmp_path: Path
):
    """``spare`` admits that many tasks beyond the cores (a thread waiting for the GIL leaves
    its core to the spare one); a task still asks for at most ``cores`` cores."""
    from desktop.engine.cores import GIL_SPARE
    from desktop.engine.registry import load_model_set
    from desktop.engine.runner import CPU_BATCH, BatchRunner
    from desktop.engine.store import ResultsStore

    budget = CoreBudget(2, spare=1)
    assert (budget.cores, budget.capacity, budget.free) == (2, 3, 3)
    lock = threading.Lock()
    running = high = 0

    def task(n: int) -> None:
        nonlocal running, high
        with budget.use(n) as held:
            assert held <= 2
            with lock:
                running += 1
                high = max(high, running)
            time.sleep(0.005)
            with lock:
                running -= 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(task, [1] * 32))
    assert high == 3 and budget.free == 3
    with budget.use(5) as held:  # capped at the cores
        assert held == 2 and budget.free == 1

    # The runner: the spare beside a decoder thread per core and the inference slots, and
    # batches of CPU_BATCH (2: both slots' buffers at once are the screening peak).
    models = load_model_set([stand_in_models])
    for cores, capacity in ((1, 1), (2, 2 + GIL_SPARE), (4, 4 + GIL_SPARE)):
        runner = BatchRunner(models, ResultsStore(tmp_path / f"{cores}.sqlite3"), cores=cores)
        assert runner.cores.capacity == capacity and runner.workers == cores
        assert runner.inference_slots == inference_slots(cores)
        assert runner.batch_size == CPU_BATCH == 2
