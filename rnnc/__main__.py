import sys

from rnnc.tools.cli import main

sys.exit(main())
