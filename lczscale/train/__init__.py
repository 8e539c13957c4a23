"""lczscale.train."""
