import sys

from innerloop.experiments.cli import main

sys.exit(main())
