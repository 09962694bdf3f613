"""TorchGeo datasets of images with short and long captions."""

from .airslt import AIRSLT
from .captions import RSICD, RSITMD, RSCaptionDataset, UCMCaptions
from .dgtrsd import DGTRSD, CaptionRecord, read_manifest
from .synthetic import LargeScene, Scene, SyntheticScenes, draw_large_scene, draw_scene
from .user import FeatureChipSampler, UserCaptions
from .utils import CorruptImageError, ManifestError

__all__ = [
    "AIRSLT",
    "DGTRSD",
    "RSICD",
    "RSITMD",
    "CaptionRecord",
    "CorruptImageError",
    "FeatureChipSampler",
    "LargeScene",
    "ManifestError",
    "RSCaptionDataset",
    "Scene",
    "SyntheticScenes",
    "UCMCaptions",
    "UserCaptions",
    "draw_large_scene",
    "draw_scene",
    "read_manifest",
]
