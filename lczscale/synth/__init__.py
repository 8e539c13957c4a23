"""lczscale.synth.world."""
