"""VQA fine-tuning entry point: ``python scripts/finetune_vqa.py --config configs/vqa_tiny.yaml`` (or through
``accelerate launch``)."""

import sys

from tcl.engine.commands import finetune_vqa as main

if __name__ == "__main__":
    sys.exit(main())
