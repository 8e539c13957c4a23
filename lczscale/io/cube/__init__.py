"""lczscale.io.cube.store."""
