"""The LCZ model: a location-aware attention U-Net, its receptive field, and safe checkpoints."""
