"""TCL's losses as pure functions of tensors."""

from tcl.losses.objectives import INFONCE, OBJECTIVES, ContrastiveObjective, contrastive_loss, objective_from_stats

__all__ = ["INFONCE", "OBJECTIVES", "ContrastiveObjective", "contrastive_loss", "objective_from_stats"]
