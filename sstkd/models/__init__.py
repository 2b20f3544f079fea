"""Segmentation networks: dilated ResNet / MobileNetV2 backbones, PSPNet and DeepLabV3 heads.

``build_model(name, num_classes, ..., flavor=None)`` builds a :class:`Segmentor` whose
``backbone.layer1`` is the stride-4 stage the SSTKD losses tap; ``flavor`` picks another
codebase's architecture (:mod:`sstkd.models.flavors`). ``from_pretrained(source)`` loads
torchvision, CIRKD, SKD/IFVD, mmseg and sstkd checkpoints (:mod:`sstkd.models.convert`).
"""
from sstkd.models.builder import MODELS, build_model, resolve_norm_layer
from sstkd.models.convert import FORMATS, convert_checkpoint, convert_state_dict, from_pretrained, load_teacher
from sstkd.models.flavors import FLAVORS, Flavor
from sstkd.models.heads import ASPP, DeepLabV3Head, FCNHead, MMSegASPPHead, PSPHead, aspp_rates
from sstkd.models.mobilenetv2 import MobileNetV2, torchvision_to_stages
from sstkd.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50, resnet101
from sstkd.models.segmentor import Segmentor
from sstkd.models.sync import SyncBatchNormAnyDevice, all_reduce_gradients, convert_sync_batchnorm
from sstkd.models.weights import (
    LoadReport,
    load_backbone_weights,
    load_checkpoint,
    model_report,
    read_state_dict,
)

__all__ = [
    "MODELS", "build_model", "resolve_norm_layer",
    "FORMATS", "convert_checkpoint", "convert_state_dict", "from_pretrained", "load_teacher",
    "FLAVORS", "Flavor",
    "ASPP", "DeepLabV3Head", "FCNHead", "MMSegASPPHead", "PSPHead", "aspp_rates",
    "MobileNetV2", "torchvision_to_stages",
    "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50", "resnet101",
    "Segmentor",
    "LoadReport", "convert_sync_batchnorm", "load_backbone_weights", "load_checkpoint", "model_report",
    "read_state_dict", "SyncBatchNormAnyDevice", "all_reduce_gradients",
]
