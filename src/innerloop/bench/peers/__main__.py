import sys

from innerloop.bench.peers.cli import main

sys.exit(main())
