"""`python -m tcpaccept`: the same command as the `tcpaccept` script."""

import sys

from .cli import main

sys.exit(main())
