"""lczscale.browse."""
