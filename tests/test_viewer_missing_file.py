"""The viewer on a row whose file is gone (found opening a broken link's row in the window)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.gui
def test_viewer_of_a_missing_file_does_not_say_loading_for_ever(qtbot, tmp_path: Path):
    """A broken link's row, opened in the viewer: the window/level note said '(loading…)'
    for good, as no load is started for a file that is not there."""
    from desktop.engine.results import ScanResult, ScanStatus, ThresholdChoice
    from desktop.gui.viewer import ScanViewer

    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "deleted.png")
    result = ScanResult(file=str(link), sha256=None, status=ScanStatus.ERROR, error_code="vanished",
                        reason="broken link: its target does not exist")  # fmt: skip
    viewer = ScanViewer(result, {}, ThresholdChoice())
    qtbot.addWidget(viewer)
    with qtbot.waitSignal(viewer.image_ready, timeout=10_000):
        pass
    assert viewer.source_label.text() == "file not available"
    assert "loading" not in viewer.window_note.text()
    assert "not found" in viewer.window_note.text()
    viewer.close()
