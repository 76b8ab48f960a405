import functools
from pathlib import Path

import pytest
import torch

from dinov2.data import (
    DataAugmentationDINO,
    MaskingGenerator,
    SamplerType,
    collate_data_and_cast,
    make_data_loader,
    make_dataset,
)
from dinov2.data.datasets import FileList, ImageFolder, ImageNet, ImageNet22k
from dinov2.data.loaders import _parse_dataset_str
from dinov2.data.transforms import make_classification_eval_transform


def test_parse_reference_strings() -> None:
    class_, kwargs = _parse_dataset_str("ImageNet:split=TRAIN:root=/data/in1k:extra=/data/in1k_extra")
    assert class_ is ImageNet
    assert kwargs == {"split": ImageNet.Split.TRAIN, "root": "/data/in1k", "extra": "/data/in1k_extra"}
    class_, kwargs = _parse_dataset_str("ImageNet22k:root=/r:extra=/e")
    assert class_ is ImageNet22k and kwargs == {"root": "/r", "extra": "/e"}
    assert _parse_dataset_str("ImageFolder:root=/images:rescan=true")[1] == {"root": "/images", "rescan": True}
    assert _parse_dataset_str("FileList:path=/l.txt")[0] is FileList
    assert _parse_dataset_str("ImageFolder:root=/x")[0] is ImageFolder


@pytest.mark.parametrize(
    ("dataset_str", "message"),
    [
        ("Places365:root=/x", r"Unsupported dataset \"Places365\".*ImageNet, ImageNet22k, ImageFolder, FileList"),
        ("ImageFolder:root=/x:split=TRAIN", r"unknown key 'split' for dataset ImageFolder; accepted keys: root"),
        ("ImageNet:split=TRAIN:root=/x:extra=/e:shuffle=1", r"accepted keys: split, root, extra"),
        ("ImageNet:split=TRAINING:root=/x:extra=/e", r"split='TRAINING' is not one of \['TRAIN', 'VAL', 'TEST'\]"),
        ("ImageNet:root=/x:extra=/e", r"needs split=\.\.\."),
        ("ImageFolder", r"needs root=\.\.\."),
        ("ImageFolder:root", r"malformed part 'root'.*key=value"),
        ("ImageFolder:root=/x:root=/y", r"given twice"),
        ("ImageFolder:root=/x:strict=maybe", r"'maybe' is not a boolean"),
        ("", r"empty"),
    ],
)
def test_bad_dataset_strings_name_the_problem(dataset_str: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _parse_dataset_str(dataset_str)


def _write_folder(root: Path, write_image, count: int) -> None:
    for i in range(count):
        write_image(root / f"{i:02d}.jpg", color=i, size=(40 + i, 30))  # the width identifies the file


def test_ssl_loader_end_to_end(tmp_path: Path, write_image) -> None:
    _write_folder(tmp_path, write_image, 6)
    dataset = make_dataset(
        dataset_str=f"ImageFolder:root={tmp_path}",
        transform=DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 2, global_crops_size=28, local_crops_size=14),
        target_transform=lambda _: (),
    )
    collate = functools.partial(
        collate_data_and_cast,
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        n_tokens=4,
        mask_generator=MaskingGenerator(2, max_num_patches=2),
        dtype=torch.half,
    )
    loader = make_data_loader(
        dataset=dataset,
        batch_size=4,
        num_workers=0,
        shuffle=True,
        seed=0,
        sampler_type=SamplerType.SHARDED_INFINITE,
        sampler_advance=0,
        drop_last=True,
        collate_fn=collate,
    )
    batches = [batch for _, batch in zip(range(2), loader)]  # infinite: more batches than the dataset holds
    assert batches[1]["collated_global_crops"].shape == (8, 3, 28, 28)
    assert batches[1]["collated_local_crops"].shape == (8, 3, 14, 14)


def test_epoch_loader_with_workers_has_a_length(tmp_path: Path, write_image) -> None:
    _write_folder(tmp_path, write_image, 5)
    dataset = make_dataset(
        dataset_str=f"ImageFolder:root={tmp_path}",
        transform=make_classification_eval_transform(resize_size=16, crop_size=16),
    )
    loader = make_data_loader(
        dataset=dataset,
        batch_size=2,
        num_workers=2,
        shuffle=False,
        sampler_type=SamplerType.EPOCH,
        drop_last=False,
        persistent_workers=True,
    )
    assert len(loader) == 3
    images, targets = next(iter(loader))
    assert images.shape == (2, 3, 16, 16) and targets.tolist() == [-1, -1]


def test_resumed_loader_yields_the_remaining_batches(tmp_path: Path, write_image) -> None:
    _write_folder(tmp_path, write_image, 7)
    dataset = make_dataset(dataset_str=f"ImageFolder:root={tmp_path}", transform=lambda image: image.width - 40)

    def loader(advance: int):
        return make_data_loader(
            dataset=dataset,
            batch_size=2,
            num_workers=0,
            sampler_type=SamplerType.INFINITE,
            sampler_advance=advance,
            collate_fn=_file_ids,
        )

    full = [b for _, b in zip(range(6), loader(0))]
    assert sorted(sum(full[:3], []) + full[3][:1]) == list(range(7))  # one shuffled pass over the 7 files
    resumed = [b for _, b in zip(range(3), loader(3 * 2))]  # 3 iterations x batch 2 x 1 rank
    assert resumed == full[3:]


def _file_ids(samples: list) -> list[int]:
    return [s[0] for s in samples]


def test_unknown_sampler_type() -> None:
    with pytest.raises(ValueError, match="unknown sampler type"):
        make_data_loader(dataset=[1, 2], batch_size=1, num_workers=0, sampler_type="INFINITE")
