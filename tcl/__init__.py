"""tcl: TCL-style vision-language pretraining and VQA fine-tuning."""

__version__ = "0.1.0"
