"""Class names and colour palettes of the segmentation datasets of the released heads (ADE20K, VOC2012).

Facts of the datasets (class order as used by the released heads: ADE20K without its "other" label 0, so
class 0 is "wall"; VOC2012 with class 0 "background"). ``colorize`` turns a class map into an RGB image.
"""

import numpy as np
import torch

__all__ = [
    "ADE20K_CLASS_NAMES",
    "ADE20K_PALETTE",
    "VOC2012_CLASS_NAMES",
    "VOC2012_PALETTE",
    "colorize",
    "get_class_names",
    "get_palette",
]

# fmt: off
# 150 classes, index = class id of the head output
ADE20K_CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling",
    "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box",
    "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet",
    "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck",
    "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage",
    "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall",
    "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# RGB colour of each ADE20K class (mmsegmentation's palette)
ADE20K_PALETTE: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

# 21 classes, index = class id of the head output
VOC2012_CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse",
    "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# fmt: on


def _voc_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map: the bits of the class id, three at a time, fill R, G, B from the top bit down."""
    colours = []
    for class_id in range(num_classes):
        r = g = b = 0
        value = class_id
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return tuple(colours)


# RGB colour of each VOC2012 class (the dataset's own annotation colours; background is black)
VOC2012_PALETTE: tuple[tuple[int, int, int], ...] = _voc_palette(len(VOC2012_CLASS_NAMES))

_DATASETS = {
    "ADE20K": (ADE20K_CLASS_NAMES, ADE20K_PALETTE),
    "VOC2012": (VOC2012_CLASS_NAMES, VOC2012_PALETTE),
}


def _lookup(dataset: str) -> tuple[tuple, tuple]:
    key = dataset.upper()
    if key not in _DATASETS:
        raise ValueError(f"Unknown segmentation dataset {dataset!r}; use one of {sorted(_DATASETS)}")
    return _DATASETS[key]


def get_class_names(dataset: str) -> tuple[str, ...]:
    """Class names of ``dataset`` ("ADE20K" or "VOC2012", any case), indexed by class id."""
    return _lookup(dataset)[0]


def get_palette(dataset: str) -> tuple[tuple[int, int, int], ...]:
    """RGB colours of ``dataset``'s classes, indexed by class id."""
    return _lookup(dataset)[1]


def colorize(segmentation: torch.Tensor | np.ndarray, dataset: str) -> np.ndarray:
    """Class map ``[H, W]`` (ids in ``[0, num_classes)``) -> RGB image ``[H, W, 3]`` uint8; other ids are black."""
    colours = np.asarray(get_palette(dataset) + ((0, 0, 0),), dtype=np.uint8)  # [K + 1, 3], last: black
    ids = segmentation.detach().cpu().numpy() if isinstance(segmentation, torch.Tensor) else np.asarray(segmentation)
    if ids.ndim != 2:
        raise ValueError(f"colorize expects one class map [H, W], got shape {tuple(ids.shape)}")
    ids = ids.astype(np.int64)
    ids = np.where((ids >= 0) & (ids < len(colours) - 1), ids, len(colours) - 1)
    return colours[ids]  # [H, W, 3]
