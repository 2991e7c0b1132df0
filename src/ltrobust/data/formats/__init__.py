"""On-disk formats: one module per format, each a reader ``(cfg) -> RawData`` of uint8 arrays."""

from .base import RawData, RawSplit, decode_image, decode_images
from .cifar import read_cifar
from .digits import read_digits
from .imagefolder import read_image_folder, read_own_folder
from .imagenet_lt import read_imagenet_lt
from .medmnist import read_medmnist
from .tinyimagenet import read_tinyimagenet

__all__ = ["RawData", "RawSplit", "decode_image", "decode_images", "read_cifar", "read_digits",
           "read_image_folder", "read_imagenet_lt", "read_medmnist", "read_own_folder", "read_tinyimagenet"]
