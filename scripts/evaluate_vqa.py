"""VQA evaluation entry point: ``python scripts/evaluate_vqa.py --run runs/vqa_tiny [--blind]``."""

import sys

from tcl.engine.commands import evaluate_vqa as main

if __name__ == "__main__":
    sys.exit(main())
