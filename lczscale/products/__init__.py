"""lczscale.products.cells."""
