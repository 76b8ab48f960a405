"""A dataset of feature vectors, shared by the eval tests: the 'backbone' under test is the identity on them."""

import torch
from torch.utils.data import Dataset


class PointDataset(Dataset):
    """Items are ``(points[i], int(labels[i]))``."""

    def __init__(self, points: torch.Tensor, labels: torch.Tensor) -> None:
        self.points, self.labels = points, labels

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.points[i], int(self.labels[i])
