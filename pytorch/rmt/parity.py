"""`python3 -m rmt.parity`, the command line users know; the tool lives in rmt.tools.parity."""
import sys

from rmt.tools.parity import main

if __name__ == "__main__":
    sys.exit(main())
