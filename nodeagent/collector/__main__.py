"""``python -m nodeagent.collector`` = ``nodeagent collect``."""

import sys

from nodeagent.collector.main import main

sys.exit(main())
