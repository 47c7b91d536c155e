"""``python -m hvcluster.watchdog``: run the node watchdog."""

import sys

from hvcluster.watchdog.node import main

sys.exit(main())
