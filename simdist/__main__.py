"""`python -m simdist {simulate,plan,ablation} ...`"""
from __future__ import annotations

import sys

from simdist.cli import main

if __name__ == "__main__":
    sys.exit(main())
