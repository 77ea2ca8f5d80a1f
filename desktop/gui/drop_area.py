"""Dropping files and folders: the empty-state panel, and the one rule for reading a drop.

Every widget that takes drops (this panel, the results table, the main window itself) turns
the drop into local paths with :func:`paths_from_mime` and hands them to the main window,
which decides with the engine's own ``discover``/``is_candidate`` what is a scan. A drop is
never silently ignored: a file that is not a scan gets a message saying so.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QMimeData, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from desktop import DISCLAIMER
from desktop.gui.qt_compat import emit

SCAN_KINDS = "PNG, JPEG, TIFF, BMP, DICOM"


def paths_from_mime(mime: QMimeData | None) -> list[Path]:
    """The local files and folders in a drag; remote URLs are not something we can screen."""
    if mime is None or not mime.hasUrls():
        return []
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]


def accept_if_files(event: QDragEnterEvent | QDragMoveEvent) -> None:
    if event.mimeData().hasUrls():
        event.acceptProposedAction()
    else:
        event.ignore()


class FileDropTarget:
    """Mixin for widgets that take dropped files: accepts drags of local files only and hands
    the dropped paths to :meth:`files_dropped`. Put it before the Qt base class."""

    def files_dropped(self, paths: list[Path]) -> None:
        raise NotImplementedError

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        accept_if_files(event)

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        accept_if_files(event)

    def dropEvent(self, event: QDropEvent) -> None:
        paths = paths_from_mime(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.files_dropped(paths)
        else:
            event.ignore()


class DropArea(FileDropTarget, QWidget):
    """The first screen: where to drop scans, the two open buttons, and the disclaimer."""

    paths_dropped = Signal(list)  # list[Path]
    open_files_requested = Signal()
    open_folder_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setObjectName("dropArea")
        self.setAutoFillBackground(True)
        self.setBackgroundRole(self.palette().ColorRole.Base)

        title = QLabel("Drop a folder of chest X-rays here")
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        title.setFont(font)
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)

        hint = QLabel(
            f"MedScreen reads {SCAN_KINDS} files, in folders and sub-folders.\n"
            "Each scan gets a tuberculosis and a pneumonia score, a heatmap and a report."
        )
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        hint.setWordWrap(True)

        style = self.style()
        files = QPushButton(
            style.standardIcon(QStyle.StandardPixmap.SP_FileIcon), "Open files…  (Ctrl+O)"
        )
        folder = QPushButton(
            style.standardIcon(QStyle.StandardPixmap.SP_DirOpenIcon),
            "Open folder…  (Ctrl+Shift+O)",
        )
        files.clicked.connect(self.open_files_requested)
        folder.clicked.connect(self.open_folder_requested)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(files)
        buttons.addWidget(folder)
        buttons.addStretch(1)

        disclaimer = QLabel(DISCLAIMER)
        disclaimer.setWordWrap(True)
        disclaimer.setAlignment(Qt.AlignmentFlag.AlignCenter)
        disclaimer.setForegroundRole(self.palette().ColorRole.PlaceholderText)
        disclaimer.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(48, 32, 48, 32)
        layout.addStretch(2)
        layout.addWidget(title)
        layout.addSpacing(8)
        layout.addWidget(hint)
        layout.addSpacing(16)
        layout.addLayout(buttons)
        layout.addStretch(3)
        layout.addWidget(disclaimer)

    def files_dropped(self, paths: list[Path]) -> None:
        emit(self.paths_dropped, paths)
