import sys

from lossprobe.cli import main

sys.exit(main())
