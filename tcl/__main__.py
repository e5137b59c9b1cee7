import sys

from tcl.cli import main

sys.exit(main())
