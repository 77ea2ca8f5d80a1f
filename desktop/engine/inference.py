"""ONNX Runtime sessions: device choice with an honest CPU fallback, and batched runs.

``onnxruntime-gpu`` lists the CUDA provider as available even on a PC with no NVIDIA GPU;
creating a CUDA session there logs an error and silently runs on the CPU. So the engine
decides itself: ``auto`` tries CUDA only when an NVIDIA driver is present, then checks which
provider the session *really* uses, and reports that. ``cuda`` asked for explicitly and not
usable is an error the user sees, never a silent fallback.

The device words (:class:`Device`, :class:`DeviceReport`, :func:`choose_device`) live in
:mod:`desktop.engine.devices`, which needs no ONNX Runtime; they are re-exported here.
The device is chosen in layers — an explicit choice (command line, GUI) over the
``MEDSCREEN_DEVICE`` environment variable over ``auto`` — as X-AnyLabeling's device manager does.
"""

from __future__ import annotations

import ctypes.util
import logging
import threading
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from desktop.engine.cores import available_cores
from desktop.engine.devices import CPU, CUDA, Device, DeviceReport
from desktop.engine.devices import choose_device as choose_device  # re-exported
from desktop.engine.errors import BatchError, ModelError
from desktop.engine.onnx_io import check_model_io

log = logging.getLogger(__name__)


def nvidia_driver_present() -> bool:
    """True when the NVIDIA driver library can be found (no driver: CUDA cannot work)."""
    return any(ctypes.util.find_library(name) for name in ("cuda", "nvcuda"))


def cuda_unavailable_reason() -> str | None:
    """Why CUDA cannot be tried here, or None when it is worth a try."""
    if CUDA not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA support"
    if not nvidia_driver_present():
        return "no NVIDIA GPU driver found"
    return None


#: Most inference batches the batch runner runs at once (each on its own thread).
MAX_INFERENCE_SLOTS = 4


def inference_slots(cores: int | None = None) -> int:
    """How many inference batches run at once on the CPU: one per core, at most four.

    Several single-threaded runs side by side scale better than one run spread over threads
    (no operator barrier waits for a thread the decoders pre-empted), and small batches of
    small models leave little for intra-op threads to share anyway.
    """
    return max(1, min(cores or available_cores(), MAX_INFERENCE_SLOTS))


def default_threads(cores: int | None = None) -> int:
    """Intra-op threads per session: the cores divided among the inference slots.

    1 on machines of up to four cores; on bigger ones each of the four slots gets a share.
    Follows the process's CPU affinity (``taskset``), so a pinned run is not oversubscribed.
    """
    cores = cores or available_cores()
    return max(1, cores // inference_slots(cores))


#: The shared CPU arena's growth: by what a run asks for, not the next power of two.
_SAME_AS_REQUESTED = 1

_arena_lock = threading.Lock()
_arena_state: list[bool] = []  # [registered?] once tried in this process


def shared_cpu_arena() -> bool:
    """One CPU memory arena for every session of this process (registered once; thread-safe).

    Why: without an arena, each run's buffers (a whole-run block of ~4-9 MB per model at
    batch 2) come from glibc's malloc, whose mmap threshold rises to their size after the
    first is freed; from then on they are carved from the heap arenas, and the heaps held
    70-97 MB freed but not returned in the middle of a batch (``mallinfo2``: ~45 MB in use),
    which ``malloc_trim`` returns only for the next runs to take again. A per-session ONNX
    Runtime arena grows by powers of two and keeps each session's peak (~165 MB more for
    batches of 16, measured before). One arena shared by the sessions and growing by what
    is asked keeps only what the runs in flight at once need: the batch process's peak over
    1,000 scans 172-174 MB vs 192-215 MB without (two alternated pairs, 2 December 2026),
    18.5 MB in the arena with memory patterns off (:func:`_session_options`), CPU time not
    higher. Falls back to no arena (as before) when this ONNX Runtime cannot register one.
    """
    with _arena_lock:
        if not _arena_state:
            try:
                info = ort.OrtMemoryInfo(
                    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                # no limit, grow by what is asked, default first chunk and split waste
                ort.create_and_register_allocator(
                    info, ort.OrtArenaCfg(0, _SAME_AS_REQUESTED, -1, -1)
                )
                _arena_state.append(True)
            except Exception as exc:  # an older or stripped build: per-run allocations
                log.info("no shared ONNX Runtime CPU arena: %s", exc)
                _arena_state.append(False)
        return _arena_state[0]


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads burn the core the image decoders need on a 2-core PC.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # CPU memory from the process's one shared arena (shared_cpu_arena: why), never a
    # session's own. Memory patterns off: a pattern is one block per run sized for the
    # whole run; tensor by tensor, the shared arena held 18.5 MB instead of 35 MB, at no
    # CPU cost (same measurement).
    options.enable_mem_pattern = False
    if shared_cpu_arena():
        options.enable_cpu_mem_arena = True
        options.add_session_config_entry("session.use_env_allocators", "1")
    else:
        options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    return options


def create_session(
    model_bytes: bytes, model_name: str, device: Device, threads: int | None = None
) -> tuple[ort.InferenceSession, DeviceReport]:
    """Build a session on the requested device and report what it really runs on."""
    options = _session_options(threads or default_threads())
    note = ""
    if device in (Device.AUTO, Device.CUDA):
        reason = cuda_unavailable_reason()
        if reason is None:
            try:
                session = ort.InferenceSession(
                    model_bytes, sess_options=options, providers=[CUDA, CPU]
                )
            except Exception as exc:  # a broken CUDA install must not stop a CPU screening
                reason = f"CUDA session failed: {exc}"
            else:
                used = session.get_providers()[0]
                if used == CUDA:
                    return session, DeviceReport(device, CUDA)
                reason = "CUDA or cuDNN libraries could not be loaded"
        if device is Device.CUDA:
            raise BatchError(
                f"CUDA was requested but cannot be used: {reason}. Install the NVIDIA driver "
                f"and the CUDA and cuDNN libraries onnxruntime-gpu {ort.__version__} was built "
                "for (installer/README.md lists them), or run with --device auto or cpu."
            )
        note = f"CUDA not used: {reason}"
    try:
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=[CPU])
    except Exception as exc:
        raise ModelError(f"model {model_name} could not be loaded by ONNX Runtime: {exc}") from exc
    return session, DeviceReport(device, CPU, note)


class OnnxModel:
    """One verified model with its session; runs NHWC float32 batches."""

    def __init__(self, session: ort.InferenceSession, input_name: str, outputs: list[str]) -> None:
        check_model_io(
            [i.name for i in session.get_inputs()],
            [o.name for o in session.get_outputs()],
            input_name,
            outputs,
        )
        self._session = session
        self._input = input_name
        self._outputs = outputs

    @property
    def session(self) -> ort.InferenceSession:
        """The ONNX Runtime session (joint.py opens a joint one on the same device)."""
        return self._session

    def run(self, batch: np.ndarray) -> Mapping[str, np.ndarray]:
        values = self._session.run(self._outputs, {self._input: batch})
        return dict(zip(self._outputs, values, strict=True))
