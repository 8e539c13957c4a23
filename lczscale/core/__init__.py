"""lczscale.core."""
