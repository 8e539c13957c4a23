"""lczscale.studies."""
