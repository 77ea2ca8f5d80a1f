"""MedScreen: offline screening of chest X-rays (decision support, not a diagnosis).

Importing this package must stay cheap and must never import Qt or TensorFlow: the command
line, training and export all use :mod:`desktop.engine` without a display.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medscreen")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

DISCLAIMER = (
    "MedScreen is a decision-support tool. Its scores are not a diagnosis: every scan must be "
    "read by a qualified clinician, and a scan that is not flagged may still show disease."
)

__all__ = ["DISCLAIMER", "__version__"]
