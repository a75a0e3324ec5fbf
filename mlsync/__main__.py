"""``python -m mlsync``: the command line."""

import sys

from mlsync.cli.main import main

sys.exit(main())
