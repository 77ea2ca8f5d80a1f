"""Trusted model packages (issue 9, defect 3), tested on copies of the real shipped models.

Each attack of the issue is replayed on the files in ``assets/models`` copied to a temporary
folder: an edited threshold, reversed labels, a manifest dropped in the user models folder, a
tampered run's cached results, an altered bundled folder; and the developer option that lets
an unsigned model run, marked on every output. Throw-away keys are generated here; the
release key never leaves the release builder's machine.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from desktop.cli import main
from desktop.engine import trust
from desktop.engine.errors import BatchError, ModelError
from desktop.engine.inference import Device
from desktop.engine.manifest import read_manifest
from desktop.engine.paths import user_models_dir
from desktop.engine.pins import BUNDLED_PINS
from desktop.engine.registry import load_model_set
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore
from export import sign as export_sign
from tests.conftest import DATA, REPO
from tests.model_factory import sign, trust_test_key

SHIPPED = REPO / "assets" / "models"
RELEASE_KEY = "medscreen-release-2026"
TB_VERSION = read_manifest(SHIPPED / "tb.json").version  # the shipped TB model's version


def _newer(version: str) -> str:
    """A version one minor release above ``version`` (``2.0.0`` -> ``2.1.0``)."""
    major, minor, *_ = (int(part) for part in version.split("."))
    return f"{major}.{minor + 1}.0"


@pytest.fixture(autouse=True)
def _drop_cli_log_handlers():
    """``main()`` adds logging handlers bound to this test's captured stderr; remove them."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
            handler.close()


@pytest.fixture
def real_models(tmp_path: Path) -> Path:
    """A copy of the shipped packages (manifest, model, signature) to attack."""
    folder = tmp_path / "models"
    folder.mkdir()
    for path in SHIPPED.iterdir():
        if path.suffix in {".json", ".onnx", ".sig"}:
            shutil.copyfile(path, folder / path.name)
    return folder


def _edit(manifest_path: Path, change) -> None:
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    change(data)
    manifest_path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def _threshold_099(data: dict) -> None:
    for point in data["operating_points"].values():
        point["threshold"] = 0.99


def _load(*dirs: Path):
    return load_model_set(list(dirs), Device.CPU, threads=1)


# --- the shipped packages ----------------------------------------------------------------


def test_shipped_packages_are_signed_by_the_release_key_and_pinned():
    models = load_model_set(device=Device.CPU, threads=1)  # bundled + (empty) user folder
    assert models.problems == []
    assert {m.signed_by for m in models.manifests.values()} == {RELEASE_KEY}
    assert models.unsigned == ()
    shipped = {read_manifest(p).id: read_manifest(p) for p in SHIPPED.glob("*.json")}
    assert set(BUNDLED_PINS) == set(shipped)
    for model_id, manifest in shipped.items():
        assert trust.package_digest(manifest.raw, manifest.sha256) == BUNDLED_PINS[model_id]
    # the private key is nowhere in the repository, only the public one
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [p for p in tracked if p.endswith((".key", ".pem"))]


def test_the_results_key_includes_the_manifest_hash(real_models: Path):
    before = read_manifest(real_models / "tb.json")
    _edit(real_models / "tb.json", _threshold_099)
    after = read_manifest(real_models / "tb.json")
    assert before.sha256 == after.sha256  # the model file is the same ...
    assert before.key != after.key  # ... but results are not shared with the edited manifest
    assert after.key == f"tb@{TB_VERSION}#{after.sha256[:12]}.{after.manifest_sha256[:12]}"


# --- defect 3, case by case ----------------------------------------------------------------


def test_tb_threshold_edited_to_099_is_refused(real_models: Path):
    _edit(real_models / "tb.json", _threshold_099)
    read_manifest(real_models / "tb.json")  # still a valid manifest: only the signature tells
    models = _load(real_models)
    assert "tb" not in models.findings and "pneumonia" in models.findings
    (problem,) = models.problems
    assert str(real_models / "tb.json") in problem
    assert "changed after it was signed" in problem


def test_reversed_labels_are_refused(real_models: Path):
    _edit(real_models / "pneumonia.json", lambda d: d["labels"].reverse())
    with pytest.raises(ModelError, match=r"pneumonia\.json was changed after it was signed"):
        trust.verify_signature(read_manifest(real_models / "pneumonia.json").raw,
                               real_models / "pneumonia.json")  # fmt: skip
    models = _load(real_models)
    assert sorted(models.findings) == ["tb"]
    assert any("pneumonia.json" in p for p in models.problems)


def test_manifest_dropped_in_the_user_folder_is_refused_and_bundled_used(capsys):
    user = user_models_dir()  # the isolated MEDSCREEN_HOME of this test
    user.mkdir(parents=True)
    shutil.copyfile(SHIPPED / "tb.onnx", user / "tb.onnx")
    shutil.copyfile(SHIPPED / "tb.json", user / "tb.json")
    _edit(user / "tb.json", lambda d: (_threshold_099(d), d.update(version="9.0.0")))
    models = load_model_set(device=Device.CPU, threads=1)
    tb = models.findings["tb"].manifest
    assert tb.path == SHIPPED / "tb.json" and tb.version == TB_VERSION
    assert tb.operating_point().threshold < 0.99 and tb.signed_by == RELEASE_KEY
    (problem,) = models.problems
    assert f"{user / 'tb.json'} is not signed" in problem
    # the CLI says so
    assert main(["models", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"warning: model package {user / 'tb.json'} is not signed" in out
    assert f"tb {TB_VERSION} (Tuberculosis)" in out and "signed by medscreen-release-2026" in out

    # the genuine signature copied along does not help an edited manifest
    shutil.copyfile(SHIPPED / "tb.sig", user / "tb.sig")
    models = load_model_set(device=Device.CPU, threads=1)
    assert models.findings["tb"].manifest.path == SHIPPED / "tb.json"
    assert "changed after it was signed" in models.problems[0]


def test_user_package_signed_by_an_unknown_key_is_refused(real_models: Path):
    stranger = Ed25519PrivateKey.generate()  # valid signature, but nobody trusts this key
    sign(real_models / "tb.json", stranger)
    models = _load(real_models)
    assert "tb" not in models.findings
    fingerprint = trust.key_fingerprint(trust.public_raw(stranger))
    assert f"signed by key {fingerprint}, which this MedScreen does not trust" in models.problems[0]


def test_signed_user_model_overrides_only_when_not_older(real_models: Path, tmp_path: Path):
    """A user model signed by a trusted key replaces the bundled one (a model update); an
    older signed release does not (no rollback to superseded thresholds)."""
    bundled = real_models  # stands for the bundled folder; pins are checked separately below
    user = tmp_path / "user"
    user.mkdir()
    shutil.copyfile(SHIPPED / "tb.onnx", user / "tb.onnx")
    shutil.copyfile(SHIPPED / "tb.json", user / "tb.json")
    trust_test_key()
    newer = _newer(TB_VERSION)
    _edit(user / "tb.json", lambda d: d.update(version=newer))
    sign(user / "tb.json")
    models = _load(bundled, user)
    assert models.findings["tb"].manifest.version == newer and models.problems == []
    _edit(user / "tb.json", lambda d: d.update(version="0.9.0"))
    sign(user / "tb.json")
    models = _load(bundled, user)
    assert models.findings["tb"].manifest.version == TB_VERSION
    assert f"is older than tb {TB_VERSION} in {bundled / 'tb.json'}" in models.problems[0]


def test_altered_bundled_folder_is_caught_by_the_pin(real_models: Path, tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    shutil.move(real_models, assets / "models")
    bundled = assets / "models"
    monkeypatch.setenv("MEDSCREEN_ASSETS", str(assets))
    models = load_model_set(device=Device.CPU, threads=1)  # an intact copy loads
    assert models.problems == [] and sorted(models.findings) == ["pneumonia", "tb"]

    # an attacker who could also sign (a leaked or a test key) is still stopped by the pin
    trust_test_key()
    _edit(bundled / "tb.json", _threshold_099)
    sign(bundled / "tb.json")
    trust.verify_signature(read_manifest(bundled / "tb.json").raw, bundled / "tb.json")
    models = load_model_set(device=Device.CPU, threads=1)
    assert "tb" not in models.findings
    assert (
        f"bundled model {bundled / 'tb.json'} does not match the package pinned"
        in (models.problems[0])
    )
    # ... and so is a package this build never shipped
    shutil.copyfile(bundled / "pneumonia.onnx", bundled / "extra.onnx")
    shutil.copyfile(bundled / "pneumonia.json", bundled / "extra.json")
    _edit(bundled / "extra.json", lambda d: d.update(id="extra", file="extra.onnx"))
    sign(bundled / "extra.json")
    models = load_model_set(device=Device.CPU, threads=1)
    assert "extra" not in models.findings
    assert any("(id 'extra') is not one this MedScreen build ships" in p for p in models.problems)


def test_tampered_manifest_results_are_not_reused(real_models: Path, tmp_path, monkeypatch):
    """Scores screened with reversed labels (possible only under the developer option) are
    cached under another key, so the genuine package re-screens instead of reusing them."""
    genuine = tmp_path / "genuine"
    shutil.copytree(real_models, genuine)
    _edit(real_models / "tb.json", lambda d: d["labels"].reverse())
    store = ResultsStore(tmp_path / "results.sqlite3")
    folder = DATA / "tb"

    monkeypatch.setenv(trust.ALLOW_UNSIGNED_ENV, "1")
    tampered_models = _load(real_models)
    assert tampered_models.unsigned == ("tb",)
    tampered = run_to_end(BatchRunner(tampered_models, store, workers=1).run([folder]))
    old = {r.file: r for r in store.batch_results(tampered.batch_id)}
    monkeypatch.delenv(trust.ALLOW_UNSIGNED_ENV)

    genuine_models = _load(genuine)
    assert genuine_models.unsigned == () and genuine_models.key != tampered_models.key
    summary = run_to_end(BatchRunner(genuine_models, store, workers=1).run([folder]))
    assert summary.reused == 0
    fresh = {r.file: r for r in store.batch_results(summary.batch_id)}
    assert len(fresh) == len(old) == 12
    for file, result in fresh.items():
        p_genuine = result.findings["tb"].probability
        p_tampered = old[file].findings["tb"].probability
        assert p_tampered == pytest.approx(1.0 - p_genuine, abs=1e-5)  # labels swapped
    sick = [r for f, r in fresh.items() if "/tuberculosis/" in f]
    assert sum(r.findings["tb"].probability > 0.5 for r in sick) >= 4  # genuine scores back


def test_unsigned_models_run_only_with_the_developer_option_and_are_marked(
    real_models: Path, tmp_path: Path, monkeypatch, capsys
):
    for sig in real_models.glob("*.sig"):
        sig.unlink()
    args = ["classify", str(DATA / "tb"), "--models", str(real_models), "--device", "cpu",
            "--quiet", "--report", "pdf"]  # fmt: skip

    # without the option: refused, with the files named
    code = main([*args, "--out", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert code != 0
    assert f"model package {real_models / 'modality.json'} is not signed" in err

    monkeypatch.setenv(trust.ALLOW_UNSIGNED_ENV, "1")
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "UNSIGNED MODELS: modality, tb, pneumonia, agegroup (developer option" in err  # order
    assert "used anyway because MEDSCREEN_ALLOW_UNSIGNED_MODELS is set" in err

    with (out / "results.csv").open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12
    assert {r["unsigned_models"] for r in rows} == {"modality; tb; pneumonia; agegroup"}
    document = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert document["batch"]["unsigned_models"] == ["modality", "tb", "pneumonia", "agegroup"]
    assert {m["signed"] for m in document["models"].values()} == {False}
    if shutil.which("pdftotext"):
        text = subprocess.run(
            ["pdftotext", "-enc", "UTF-8", str(next(out.glob("medscreen-*.pdf"))), "-"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "UNSIGNED MODELS" in text and "not for clinical use" in text
        pages = text.count("\f")
        assert text.count("· UNSIGNED MODELS") == pages  # in every page's footer


def test_signed_run_reports_carry_no_unsigned_mark(real_models: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    args = ["classify", str(DATA / "tb" / "normal"), "--models", str(real_models), "--device",
            "cpu", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "UNSIGNED" not in capsys.readouterr().err
    with (out / "results.csv").open(encoding="utf-8-sig", newline="") as handle:
        assert "unsigned_models" not in next(csv.reader(handle))
    document = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert document["batch"]["unsigned_models"] == []
    assert {m["signed"] for m in document["models"].values()} == {True}


# --- the signature format ----------------------------------------------------------------


def test_signature_survives_reformatting_and_line_endings(real_models: Path):
    """Canonical JSON is signed, so a checkout that turns LF into CRLF still verifies."""
    path = real_models / "tb.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_bytes(json.dumps(data, indent=4, sort_keys=False).replace("\n", "\r\n").encode())
    assert trust.verify_signature(read_manifest(path).raw, path) == RELEASE_KEY


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is damaged"),
        ('{"format": "other/1"}', "is damaged"),
        ('{"format": "medscreen.model-signature/1", "key": "x", "signature": "%%%"}', "damaged"),
        (" " * 70_000, "too large to be one"),
    ],
)
def test_damaged_signature_file_is_refused(real_models: Path, content: str, message: str):
    (real_models / "tb.sig").write_text(content, encoding="utf-8")
    with pytest.raises(ModelError, match=message):
        trust.verify_signature(read_manifest(real_models / "tb.json").raw, real_models / "tb.json")


def test_signature_that_is_not_text_is_refused(real_models: Path):
    (real_models / "tb.sig").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ModelError, match="cannot read the signature"):
        trust.verify_signature(read_manifest(real_models / "tb.json").raw, real_models / "tb.json")


def test_key_rotation(real_models: Path, monkeypatch):
    """Two trusted keys: packages signed by either load; dropping a key refuses its packages."""
    new_key = Ed25519PrivateKey.generate()
    monkeypatch.setitem(trust.TRUSTED_KEYS, "release-2027", trust.public_raw(new_key).hex())
    sign(real_models / "pneumonia.json", new_key)  # tb and modality keep the 2026 signature
    models = _load(real_models)
    assert models.problems == []
    assert models.findings["pneumonia"].manifest.signed_by == "release-2027"
    assert models.findings["tb"].manifest.signed_by == RELEASE_KEY
    monkeypatch.delitem(trust.TRUSTED_KEYS, RELEASE_KEY)
    with pytest.raises(BatchError, match="modality"):  # the gate was signed by the dropped key
        _load(real_models)


# --- the release command ----------------------------------------------------------------


def test_sign_command_signs_verifies_and_refuses_keys_in_the_repo(
    real_models: Path, tmp_path: Path, capsys, monkeypatch
):
    key_path = tmp_path / "keys" / "ed25519.key"
    assert export_sign.main(["--generate-key", str(key_path)]) == 0
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert (key_path.parent.stat().st_mode & 0o777) == 0o700
    public_hex = capsys.readouterr().out.split('"<name>": "')[1][:64]
    assert export_sign.main(["--generate-key", str(key_path)]) == 2  # never overwritten

    _edit(real_models / "tb.json", _threshold_099)  # a "new release" of tb
    manifests = [str(p) for p in sorted(real_models.glob("*.json"))]
    # a key the app does not trust is refused unless asked for
    assert export_sign.main(["--key", str(key_path), *manifests]) == 2
    assert "is not among the app's trusted keys" in capsys.readouterr().err
    assert export_sign.main(["--key", str(key_path), "--allow-untrusted-key", *manifests]) == 0
    assert "pin table not changed" in capsys.readouterr().out
    monkeypatch.setitem(trust.TRUSTED_KEYS, "rotated", public_hex)  # as a new release adds it
    models = _load(real_models)
    assert models.problems == [] and models.findings["tb"].manifest.signed_by == "rotated"
    assert models.findings["tb"].manifest.operating_point().threshold == 0.99
    inside = REPO / "never-here.key"
    assert export_sign.main(["--key", str(inside), *manifests]) == 2
    assert "inside the repository" in capsys.readouterr().err
    assert not inside.exists()


def test_pin_table_is_written_as_importable_code(tmp_path: Path):
    pins = {"tb": "a" * 64, "modality": "b" * 64}
    path = tmp_path / "pins.py"
    export_sign.write_pins(pins, path)
    namespace: dict = {}
    exec(path.read_text(encoding="utf-8"), namespace)
    assert namespace["BUNDLED_PINS"] == pins
