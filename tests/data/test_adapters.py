from dinov2.data import DatasetWithEnumeratedTargets


class _Pairs:
    def __init__(self, targets: list) -> None:
        self.targets = targets

    def __getitem__(self, index: int):
        return f"image{index}", self.targets[index]

    def __len__(self) -> int:
        return len(self.targets)

    def get_image_data(self, index: int) -> bytes:
        return f"bytes{index}".encode()

    def get_target(self, index: int):
        return self.targets[index]


def test_enumerated_targets() -> None:
    wrapped = DatasetWithEnumeratedTargets(_Pairs([7, None, 3]))
    assert len(wrapped) == 3
    assert wrapped[0] == ("image0", (0, 7))
    assert wrapped[1] == ("image1", (1, 1))  # a missing target becomes the index
    assert wrapped.get_target(2) == (2, 3)
    assert wrapped.get_target(1) == (1, None)
    assert wrapped.get_image_data(2) == b"bytes2"
