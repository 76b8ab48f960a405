"""Dataset wrappers used by the evaluations."""

from typing import Any

from torch.utils.data import Dataset

__all__ = ["DatasetWithEnumeratedTargets"]


class DatasetWithEnumeratedTargets(Dataset):
    """Returns ``(image, (index, target))`` so that evaluation code can put gathered features back in order.

    A missing target (``None``, e.g. ImageNet's TEST split) is replaced by the sample index, since None does not
    collate.
    """

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset

    def get_image_data(self, index: int) -> bytes:
        return self._dataset.get_image_data(index)

    def get_target(self, index: int) -> tuple[int, Any]:
        target = self._dataset.get_target(index)
        return (index, target)

    def __getitem__(self, index: int) -> tuple[Any, tuple[int, Any]]:
        image, target = self._dataset[index]
        target = index if target is None else target
        return image, (index, target)

    def __len__(self) -> int:
        return len(self._dataset)
