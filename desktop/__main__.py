"""``python -m desktop``: the same entry point as the ``medscreen`` command.

:mod:`desktop.launch`, not :mod:`desktop.cli`: the window must not import the command
line's engine modules (ONNX Runtime, pydicom, requests); see desktop/launch.py.
"""

from desktop.launch import main

if __name__ == "__main__":
    raise SystemExit(main())
