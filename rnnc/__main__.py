import sys

from rnnc.cli import main

sys.exit(main())
