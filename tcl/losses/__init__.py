"""TCL's losses as pure functions of tensors."""

from tcl.losses.objectives import OBJECTIVES, contrastive_loss, objective_from_stats

__all__ = ["OBJECTIVES", "contrastive_loss", "objective_from_stats"]
