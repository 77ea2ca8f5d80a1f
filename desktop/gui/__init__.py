"""The MedScreen desktop window (Qt/PySide6): a thin face on :mod:`desktop.engine`.

Everything long (loading models, screening, reading a full-size scan, writing a report) runs
in a worker thread through the engine's own functions and generators; the widgets only show
what the engine reports. Importing :mod:`desktop` never imports this package (the CLI and
training run without a display); :func:`desktop.gui.app.main` is the entry point.
"""
