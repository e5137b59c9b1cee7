"""Models: the TCL pretraining model and its parts."""

from tcl.models.pretrain import PretrainOutput, SpecialTokens, TCLPretrainModel

__all__ = ["PretrainOutput", "SpecialTokens", "TCLPretrainModel"]
