"""lczscale.io.labels.reader."""
