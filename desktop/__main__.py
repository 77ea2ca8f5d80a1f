"""``python -m desktop``: the same entry point as the ``medscreen`` command."""

from desktop.cli import main

raise SystemExit(main())
