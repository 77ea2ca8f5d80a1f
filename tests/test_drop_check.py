"""What the window says about a dropped folder before screening it (``_check_drop``, the
engine's own discovery rules): files that are not scans are counted in plain English."""

from __future__ import annotations

import shutil
from pathlib import Path

from desktop.gui.main_window import _check_drop
from tests.conftest import DATA


def test_a_drop_counts_the_files_that_are_not_scans_in_words(tmp_path: Path) -> None:
    one, three = tmp_path / "ward_a", tmp_path / "ward_b"
    for folder, extras in ((one, 1), (three, 3)):
        shutil.copytree(DATA / "tb" / "normal", folder)
        for i in range(extras):
            (folder / f"notes{i}.txt").write_text("handover notes", encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing to screen", encoding="utf-8")

    accepted, problems, notes = _check_drop([one, three, empty])
    assert accepted == [one, three]
    assert any(n.startswith("1 file in ward_a is not a scan (") and n.endswith("was skipped.")
               for n in notes), notes  # fmt: skip
    assert any(n.startswith("3 files in ward_b are not scans (") and n.endswith("were skipped.")
               for n in notes), notes  # fmt: skip
    assert len(problems) == 1 and problems[0].startswith("The folder empty holds no scan")
