from .extended import ExtendedVisionDataset
from .file_list import FileList
from .image_folder import ImageFolder
from .image_net import ImageNet
from .image_net_22k import ImageNet22k

__all__ = ["ExtendedVisionDataset", "FileList", "ImageFolder", "ImageNet", "ImageNet22k"]
