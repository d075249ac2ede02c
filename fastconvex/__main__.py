import sys

from fastconvex.cli import main

sys.exit(main())
