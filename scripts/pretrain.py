"""TCL pretraining entry point: ``python scripts/pretrain.py --config configs/pretrain_tiny.yaml`` or through
``accelerate launch`` (see configs/accelerate/)."""

import sys

from tcl.engine.commands import pretrain as main

if __name__ == "__main__":
    sys.exit(main())
