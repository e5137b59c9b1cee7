"""Retrieval evaluation entry point: ``python scripts/evaluate_retrieval.py --run runs/pretrain_tiny``."""

import sys

from tcl.engine.commands import evaluate_retrieval as main

if __name__ == "__main__":
    sys.exit(main())
