"""`python -m udet_core ...`: the command line (`udet_core.cli.main`)."""
import sys

from udet_core.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
