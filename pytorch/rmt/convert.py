"""`python3 -m rmt.convert`, the command line users know; the tool lives in rmt.tools.convert."""
import sys

from rmt.tools.convert import main

if __name__ == "__main__":
    sys.exit(main())
