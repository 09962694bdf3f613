"""TorchGeo tasks that train DGTRS-CLIP (``torchgeo fit --config trainers/<recipe>.yaml``)."""

from .dgtrs_clip import DGTRSCLIPTask, encode_text_trimmed, warmup_cosine

__all__ = ["DGTRSCLIPTask", "encode_text_trimmed", "warmup_cosine"]
