"""lczscale.execute.clusters.start."""
