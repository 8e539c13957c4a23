"""The network and its checkpoint: an attention U-Net over embeddings, as safetensors + JSON."""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.model.unet": ["LczUNet", "receptive_field"],
        "lczscale.model.checkpoint": [
            "CheckpointMeta",
            "load_checkpoint",
            "save_checkpoint",
            "check_input",
        ],
    },
)
