"""Loaders for the public remote-sensing vision-language data sets, in the formats they are published in.

One module per format family (see README.md in this folder for folder layouts and papers):

    karpathy          KarpathyCaptions      RSICD, UCM-Captions, Sydney-Captions, RSITMD (dataset_*.json)
    change_captions   LevirCC, SecondCC     bi-temporal change captioning
    rsvg              DiorRSVG              referring expression -> box (VOC XML + split index files)
    rsvqa             RSVQA                 LR / HR visual question answering
    conversations     Conversations, GeoChatInstruct, ChangeChat   LLaVA conversation JSON
    coco_masks        CocoMasks             GeoPixInstruct-style COCO RLE / polygon masks
    skyscript         SkyScript             image-caption CSV
    shards            iter_shards, WebShards   WebDataset tar shards (RS5M), streamed

Map-style loaders are ``torch.utils.data.Dataset``s that parse annotations up front and open images
only when a sample asks (``sample.image()``) or a ``transform`` does. Every problem with the files on
disk raises :class:`DataFormatError` (a ValueError) naming the file, what was found and what was expected.
"""

from training.data.formats._common import DataFormatError
from training.data.formats.change_captions import ChangeCaptionSample, LevirCC, SecondCC
from training.data.formats.coco_masks import CocoMasks, MaskInstance, SegmentationSample, decode_segmentation
from training.data.formats.conversations import (
    BoxConvention,
    ChangeChat,
    Conversations,
    ConversationSample,
    GeoChatInstruct,
    Role,
    Turn,
)
from training.data.formats.karpathy import CaptionSample, KarpathyCaptions
from training.data.formats.rsvg import DiorRSVG, GroundingSample
from training.data.formats.rsvqa import RSVQA, VQASample
from training.data.formats.shards import ShardSample, WebShards, expand_braces, iter_shards
from training.data.formats.skyscript import ImageTextSample, SkyScript

__all__ = [
    "RSVQA",
    "BoxConvention",
    "CaptionSample",
    "ChangeCaptionSample",
    "ChangeChat",
    "CocoMasks",
    "ConversationSample",
    "Conversations",
    "DataFormatError",
    "DiorRSVG",
    "GeoChatInstruct",
    "GroundingSample",
    "ImageTextSample",
    "KarpathyCaptions",
    "LevirCC",
    "MaskInstance",
    "Role",
    "SecondCC",
    "SegmentationSample",
    "ShardSample",
    "SkyScript",
    "Turn",
    "VQASample",
    "WebShards",
    "decode_segmentation",
    "expand_braces",
    "iter_shards",
]
