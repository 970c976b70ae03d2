import sys

from innerloop.bench.meta_step import main

sys.exit(main())
