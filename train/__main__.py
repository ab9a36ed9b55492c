"""``python -m train ...`` is ``edge-detect ...`` run from the checkout (e.g. ``data stats``)."""

from edge_detect.cli import main

raise SystemExit(main())
