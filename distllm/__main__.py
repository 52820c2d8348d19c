"""`python -m distllm` == the `distllm` console script."""
from __future__ import annotations

import sys

from distllm.entrypoints.cli import main

if __name__ == "__main__":
    sys.exit(main())
