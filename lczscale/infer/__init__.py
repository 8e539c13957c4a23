"""lczscale.infer."""
