import sys

from cmapdask.cli import main

sys.exit(main())
