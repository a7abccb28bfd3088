import sys

from capcalc.entry import main

sys.exit(main())
