"""Thresholds per model (screening/balanced/custom/site each) and the programme's policy file
that sets and locks them, for the window and the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from desktop import cli
from desktop.engine.manifest import read_manifest
from desktop.engine.policy import PolicyError, load_policy
from desktop.engine.results import ThresholdChoice, operating_points

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "models"
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def manifests():
    return {m: read_manifest(ASSETS / f"{m}.json") for m in ("modality", "tb", "pneumonia")}


def test_a_choice_per_model(manifests) -> None:
    choice = ThresholdChoice.parse("tb=balanced, pneumonia=0.6")
    points = operating_points(manifests, choice)
    assert points["tb"].name == "balanced"
    assert points["tb"].threshold == manifests["tb"].operating_points["balanced"].threshold
    assert points["pneumonia"].name == "custom" and points["pneumonia"].threshold == 0.6
    assert choice.text() == "tb=balanced,pneumonia=0.6"
    assert ThresholdChoice.parse(choice.text()) == choice
    assert choice.label() == "tb: balanced; pneumonia: custom 0.6"
    # a model not named gets its manifest default
    only_tb = operating_points(manifests, ThresholdChoice.parse("tb=0.5"))
    assert only_tb["pneumonia"] == manifests["pneumonia"].operating_point(None)
    for bad in ("tb=", "=0.5", "tb=balanced,pneumonia", "tb=1.5", "tb=a=b"):
        with pytest.raises(ValueError):
            ThresholdChoice.parse(bad)


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.ini"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o444)  # as a programme deploys it
    return path


def test_policy_file(tmp_path: Path) -> None:
    assert load_policy([tmp_path / "none.ini"]).source is None
    path = _policy(tmp_path, "[thresholds]\noperating_point = tb=balanced,pneumonia=0.6\n"
                   "locked = yes\n")  # fmt: skip
    policy = load_policy([path])
    assert policy.locked and policy.operating_point == "tb=balanced,pneumonia=0.6"
    assert policy.describe() == f"thresholds locked by {path}"
    broken = tmp_path / "b"
    broken.mkdir()
    for text, words in (
        ("[thresholds]\nlocked = yes\n", "sets none"),
        ("[thresholds]\noperating_point = balanced\nlocked = maybe\n", "yes or no"),
        ("operating_point = x\n", "cannot be read"),
    ):
        bad = broken / f"{len(text)}.ini"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(PolicyError, match=words):
            load_policy([bad])


def test_the_command_line_follows_a_locked_policy(tmp_path, monkeypatch, capsys) -> None:
    folder = tmp_path / "scans"
    shutil.copytree(DATA / "tb" / "tuberculosis", folder)
    path = _policy(tmp_path, "[thresholds]\noperating_point = tb=balanced,pneumonia=0.6\n"
                   "locked = yes\n")  # fmt: skip
    monkeypatch.setenv("MEDSCREEN_POLICY", str(path))
    base = ["classify", str(folder), "--db", str(tmp_path / "s.sqlite3")]
    code = cli.main([*base, "--out", str(tmp_path / "a"), "--operating-point", "screening"])
    assert code == 1
    assert "locked to 'tb=balanced,pneumonia=0.6' by the policy file" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "b")]) == 0
    document = json.loads((tmp_path / "b" / "results.json").read_text(encoding="utf-8"))
    models = document["operating_point"]["models"]
    assert models["tb"]["name"] == "balanced" and models["pneumonia"]["threshold"] == 0.6
    # the same choice written another way is not "another" choice
    spaced = ["--operating-point", "tb=balanced, pneumonia=0.60"]
    assert cli.main([*base, "--out", str(tmp_path / "c"), *spaced]) == 0


def test_the_window_per_model_choice_policy_lock_and_pin(qtbot, tmp_path, monkeypatch):
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pytest.importorskip("pytestqt")
    from desktop.engine.registry import default_model_dirs
    from desktop.engine.store import ResultsStore
    from desktop.gui.main_window import MainWindow
    from desktop.gui.operating_point import PER_MODEL
    from desktop.gui.settings import AppSettings

    stores: list[ResultsStore] = []

    def window_with(settings: AppSettings) -> MainWindow:
        stores.append(ResultsStore(tmp_path / f"s{len(stores)}.sqlite3"))
        window = MainWindow(settings=settings, store=stores[-1], model_dirs=default_model_dirs())
        qtbot.addWidget(window)
        window.show()
        with qtbot.waitSignal(window.models_changed, timeout=60_000):
            window.start()
        return window

    # No policy: none in the usual places (here one, empty). Not MEDSCREEN_POLICY naming a
    # missing file, as this test once did: that now keeps the thresholds locked (fail closed,
    # an unmounted share must not lift a programme's lock; test_qa_followup7).
    import desktop.engine.policy as policy_module

    monkeypatch.delenv("MEDSCREEN_POLICY", raising=False)
    usual_places = policy_module.policy_paths
    monkeypatch.setattr(policy_module, "policy_paths", lambda: [tmp_path / "absent.ini"])
    settings = AppSettings(tmp_path / "settings.ini")
    settings.operating_point = "tb=balanced,pneumonia=0.6"
    try:
        window = window_with(settings)
        picker = window.op_picker
        assert picker.combo.currentData() == PER_MODEL and not picker.is_locked()
        points = window.model._points
        assert points["tb"].name == "balanced" and points["pneumonia"].threshold == 0.6
        dialog = picker.edit_per_model()
        combo, spin = dialog.rows["tb"]
        combo.setCurrentIndex(combo.findData("__custom__"))
        spin.setValue(0.3)
        dialog.accept()
        assert picker.setting_text() == "tb=0.3,pneumonia=0.6"
        assert settings.operating_point == "tb=0.3,pneumonia=0.6"
        # a PIN locks it until entered
        settings.set_pin("4821")
        window.apply_threshold_lock()
        assert picker.is_locked() and not picker.combo.isEnabled()
        picker.ask_pin = lambda: "0000"
        assert not picker._unlock() and picker.is_locked()
        picker.ask_pin = lambda: "4821"
        assert picker._unlock() and picker.combo.isEnabled()
        settings.sync()
        assert "4821" not in (tmp_path / "settings.ini").read_text(encoding="utf-8")
        window.close()

        # a programme's policy file sets and locks it; the PIN cannot open that lock
        policy = _policy(tmp_path, "[thresholds]\noperating_point = balanced\nlocked = yes\n")
        monkeypatch.setattr(policy_module, "policy_paths", usual_places)
        monkeypatch.setenv("MEDSCREEN_POLICY", str(policy))
        window = window_with(settings)
        picker = window.op_picker
        assert picker.setting_text() == "balanced" and picker.is_locked()
        assert not picker.lock_button.isEnabled() and str(policy) in picker.lock_button.toolTip()
        window.close()
    finally:
        for store in stores:
            store.close()
