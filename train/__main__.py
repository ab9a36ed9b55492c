"""``python -m train ...``: the ``edge-detect`` CLI with the commands of ``train/`` only.

Leaving out the other workstation tools (``export/``) keeps their imports out of quick commands
such as ``python -m train data stats``, whose cached run takes well under a second.
"""

from edge_detect import cli

cli.WORKSTATION_COMMAND_MODULES = tuple(
    entry for entry in cli.WORKSTATION_COMMAND_MODULES if entry[0] == "train.cli"
)
raise SystemExit(cli.main())
