"""``python -m edge_detect`` is the ``edge-detect`` command."""

from edge_detect.cli import main

raise SystemExit(main())
