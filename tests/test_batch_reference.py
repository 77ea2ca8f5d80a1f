"""A batch's stored rows equal a reference run's, bit for bit, whatever the runner's threads.

The batch runner's speed work (how decoder threads hand scans to inference, batch sizes,
shared preprocessing) must not change a single output. This screens real scans of every
kind the runner meets — 8-bit JPEGs large enough for libjpeg's DCT scaling (2048² from a
real chest X-ray), the TB PNGs, the Kermany JPEGs, colour photographs, MedNIST hands and
head CTs, a CR DICOM and a JPEG 2000 DICOM, and a damaged file — with the shipped models,
and compares every stored row (status, reason, modality and finding probabilities as exact
floats, the patient-group estimate, warnings, metadata, the thumbnail's and each activation
map's bytes) with ``tests/reference/batch_reference.json``, recorded by the code of commit
8683f71, before that work.

Rows do not depend on how a batch is split for inference (ONNX Runtime computes each image of
a batch alike: checked with batches of 1 to 12 before the reference was recorded), so every
runner configuration must reproduce the reference.

To record the reference again after a deliberate change of outputs (new models, new
preprocessing): ``python -m tests.test_batch_reference --write``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from desktop.engine.inference import choose_device
from desktop.engine.registry import default_model_dirs, load_model_set
from desktop.engine.results import ScanResult
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore

DATA = Path(__file__).parent / "data"
REFERENCE = Path(__file__).parent / "reference" / "batch_reference.json"
#: 2048² 8-bit JPEGs made from these TB fixtures (libjpeg decodes them at ¼ scale).
LARGE_SOURCES = ("tb/normal/CHNCXR_0001_0.png", "tb/tuberculosis/MCUCXR_0104_1.png")


def build_folder(root: Path) -> Path:
    """The reference folder: real fixtures of every format plus two 2048² JPEGs."""
    for sub in ("tb", "pneumonia", "photos", "mednist/Hand", "mednist/HeadCT", "dicom"):
        shutil.copytree(DATA / sub, root / sub)
    large = root / "large"
    large.mkdir()
    for i, name in enumerate(LARGE_SOURCES):
        grey = Image.open(DATA / name).convert("L")
        grey.resize((2048, 2048), Image.Resampling.BICUBIC).save(
            large / f"large_{i}.jpg", "JPEG", quality=92
        )
    (root / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return root


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def row(result: ScanResult, root: Path) -> dict[str, Any]:
    """A stored row in comparable form: every field but the time stamp, floats as repr (so
    equality is bit for bit), images as the SHA-256 of their bytes."""
    findings = {
        model_id: {
            "model_key": f.model_key,
            "probability": repr(f.probability),
            "probabilities": {k: repr(v) for k, v in f.probabilities.items()},
            "activation": None if f.activation is None else _digest(f.activation.tobytes()),
            "activation_shape": None if f.activation is None else list(f.activation.shape),
        }
        for model_id, f in sorted(result.findings.items())
    }
    group = result.group_estimate
    return {
        "sha256": result.sha256,
        "status": result.status.value,
        "reason": result.reason,
        "error_code": result.error_code,
        "modality": result.modality,
        "modality_score": repr(result.modality_score),
        "modality_probabilities": {k: repr(v) for k, v in result.modality_probabilities.items()},
        "ood_score": repr(result.ood_score),
        "findings": findings,
        "warnings": list(result.warnings),
        "metadata": json.loads(json.dumps(result.metadata, sort_keys=True, default=str)),
        "models_key": result.models_key,
        "thumbnail": _digest(result.thumbnail_png),
        "group_estimate": None
        if group is None
        else [group.model_key, repr(group.p_child), repr(group.threshold)],
    }


def screen(root: Path, store_path: Path, **runner_options: Any) -> dict[str, dict[str, Any]]:
    """Screen ``root`` with the shipped models; every stored row by its path under ``root``."""
    models = load_model_set(default_model_dirs(), choose_device("cpu"))
    store = ResultsStore(store_path)
    try:
        summary = run_to_end(BatchRunner(models, store, **runner_options).run([root]))
        rows = {
            Path(r.file).relative_to(root).as_posix(): row(r, root)
            for r in store.batch_results(summary.batch_id)
        }
    finally:
        store.close()
    assert len(rows) == summary.total
    return rows


def _inputs(root: Path) -> dict[str, str]:
    """The SHA-256 of each generated file: a new Pillow may encode the JPEGs differently,
    which changes the input, not MedScreen's outputs (the test then says so)."""
    return {p.name: _digest(p.read_bytes()) or "" for p in sorted((root / "large").iterdir())}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_folder(tmp_path_factory.mktemp("reference") / "scans")


@pytest.fixture(scope="module")
def reference(folder: Path) -> dict[str, Any]:
    recorded = json.loads(REFERENCE.read_text(encoding="utf-8"))
    if recorded["inputs"] != _inputs(folder):
        pytest.skip("this Pillow encodes the generated JPEGs differently: record again")
    return recorded["rows"]


@pytest.mark.parametrize(
    "options",
    [{}, {"workers": 1, "batch_size": 1, "min_batch": 1}, {"workers": 3, "batch_size": 8}],
    ids=["default", "one-thread-batches-of-1", "three-threads-batches-of-8"],
)
def test_stored_rows_equal_the_reference_run(
    folder: Path, reference: dict[str, Any], tmp_path: Path, options: dict[str, Any]
):
    rows = screen(folder, tmp_path / "r.sqlite3", **options)
    assert sorted(rows) == sorted(reference)
    # the reference holds chest X-rays screened by every model, refusals and errors
    statuses = {r["status"] for r in reference.values()}
    assert statuses == {"ok", "not_chest_xray", "error"}
    assert sum(len(r["findings"]) == 2 for r in reference.values()) >= 20
    different = [name for name in sorted(rows) if rows[name] != reference[name]]
    assert not different, f"rows differ from the reference run: {different[:5]}"


def write_reference(work: Path) -> None:
    root = build_folder(work / "scans")
    rows = screen(root, work / "r.sqlite3")
    REFERENCE.write_text(
        json.dumps({"inputs": _inputs(root), "rows": rows}, indent=1, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    print(f"{REFERENCE}: {len(rows)} rows")


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_batch_reference --write")
    with tempfile.TemporaryDirectory() as tmp:
        write_reference(Path(tmp))
