"""The zoomable, pannable picture of one scan with its heatmap layer.

Two pixmap items share a scene: the grey scan and, above it, the heatmap in full colour. The
overlay is a layer whose opacity Qt blends at paint time, so moving the opacity slider or
toggling the heatmap repaints at once without recomputing any pixels; only window/level
changes rebuild the grey image.

Mouse: wheel zooms about the cursor, left-drag pans, right-drag adjusts window/level
(horizontal = width, vertical = centre, as in most PACS viewers). Keys: + / − zoom, F or 0 fits.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, QRectF, Qt, Signal
from PySide6.QtGui import QImage, QKeyEvent, QMouseEvent, QPainter, QPixmap, QWheelEvent
from PySide6.QtWidgets import QGraphicsPixmapItem, QGraphicsScene, QGraphicsView, QWidget

from desktop.gui.qt_compat import emit

ZOOM_STEP = 1.25


def grey_to_qimage(grey01: np.ndarray) -> QImage:
    """float [0, 1] (H, W) → an owned Grayscale8 QImage."""
    data = np.ascontiguousarray(np.clip(np.rint(grey01 * 255.0), 0, 255).astype(np.uint8))
    height, width = data.shape
    return QImage(data.data, width, height, width, QImage.Format.Format_Grayscale8).copy()


def heat_to_qimage(rgb: np.ndarray, alpha01: np.ndarray) -> QImage:
    """Heatmap colours (uint8 (H, W, 3)) with per-pixel alpha = activation → RGBA QImage.

    Alpha follows the activation, as in the engine's :func:`~desktop.engine.overlay.overlay`:
    where the model paid no attention the scan stays untouched grey. The layer's opacity
    (the slider) then scales the whole layer, so the viewer and the PDF blend the same way.
    """
    height, width, _ = rgb.shape
    rgba = np.empty((height, width, 4), dtype=np.uint8)
    rgba[:, :, :3] = rgb
    rgba[:, :, 3] = np.clip(np.rint(alpha01 * 255.0), 0, 255).astype(np.uint8)
    return QImage(rgba.data, width, height, width * 4, QImage.Format.Format_RGBA8888).copy()


class ImageCanvas(QGraphicsView):
    #: Right-drag deltas in screen pixels (dx → width, dy → centre); the viewer maps them.
    window_drag = Signal(int, int)
    zoom_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene = QGraphicsScene(self)
        self.setScene(self._scene)
        self._base = QGraphicsPixmapItem()
        self._base.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._heat = QGraphicsPixmapItem()
        self._heat.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._heat.setZValue(1)
        self._heat.setVisible(False)
        self._scene.addItem(self._base)
        self._scene.addItem(self._heat)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setBackgroundRole(self.palette().ColorRole.Dark)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._fit = True
        self._right_drag: QPoint | None = None

    # -- content ---------------------------------------------------------------------------
    def set_base(self, image: QImage) -> None:
        size_changed = QPixmap.fromImage(image).size() != self._base.pixmap().size()
        self._base.setPixmap(QPixmap.fromImage(image))
        self._scene.setSceneRect(QRectF(self._base.pixmap().rect()))
        if size_changed or self._fit:
            self.fit()

    def set_heat(self, image: QImage | None) -> None:
        self._heat.setPixmap(QPixmap() if image is None else QPixmap.fromImage(image))
        if image is not None and not self._base.pixmap().isNull():
            base = self._base.pixmap()
            self._heat.setScale(base.width() / max(1, image.width()))

    def set_heat_visible(self, visible: bool) -> None:
        self._heat.setVisible(visible and not self._heat.pixmap().isNull())

    def heat_visible(self) -> bool:
        return self._heat.isVisible()

    def set_heat_opacity(self, opacity: float) -> None:
        self._heat.setOpacity(opacity)

    def has_image(self) -> bool:
        return not self._base.pixmap().isNull()

    # -- zoom ------------------------------------------------------------------------------
    def zoom(self) -> float:
        return self.transform().m11()

    def zoom_by(self, factor: float) -> None:
        new = self.zoom() * factor
        if not 0.02 <= new <= 40:
            return
        self._fit = False
        self.scale(factor, factor)
        emit(self.zoom_changed, self.zoom())

    def fit(self) -> None:
        if self._base.pixmap().isNull():
            return
        self._fit = True
        self.fitInView(self._base, Qt.AspectRatioMode.KeepAspectRatio)
        emit(self.zoom_changed, self.zoom())

    def resizeEvent(self, event: object) -> None:  # type: ignore[override]
        super().resizeEvent(event)  # type: ignore[arg-type]
        if self._fit:
            self.fit()

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120
        if steps:
            self.zoom_by(ZOOM_STEP**steps)
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_by(ZOOM_STEP)
        elif key in (Qt.Key.Key_Minus, Qt.Key.Key_Underscore):
            self.zoom_by(1 / ZOOM_STEP)
        elif key in (Qt.Key.Key_F, Qt.Key.Key_0):
            self.fit()
        else:
            super().keyPressEvent(event)

    # -- right-drag window/level -------------------------------------------------------------
    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton:
            self._right_drag = event.position().toPoint()
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._right_drag is not None:
            pos = event.position().toPoint()
            delta = pos - self._right_drag
            self._right_drag = pos
            emit(self.window_drag, delta.x(), delta.y())
            event.accept()
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton and self._right_drag is not None:
            self._right_drag = None
            event.accept()
            return
        super().mouseReleaseEvent(event)
