import sys

from capcalc.cli import main

sys.exit(main())
