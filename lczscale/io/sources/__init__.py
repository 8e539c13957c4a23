"""lczscale.io.sources.registry."""
