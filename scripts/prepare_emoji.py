"""Writes a labelled folder of emoji images for ``scripts/main_job.sh --dataset-dir``: a second real dataset of
another kind than Fashion-MNIST (64 px RGBA colour drawings, 9 Unicode categories such as Flags or Food & Drink).

    npm install --prefix /tmp/emoji emoji-datasource-google emoji-datasource-twitter
    python scripts/prepare_emoji.py --npm-root /tmp/emoji/node_modules --output data/emoji

Google's images are Apache-2.0, Twitter's (Twemoji) CC-BY 4.0; the metadata is MIT. Output: ``train/<category>/``,
``val/<category>/`` (a fixed fifth of the emoji names, every vendor's drawing of a name on the same side, so no
emoji is seen in both splits) and ``unlabeled/`` (the skin-tone variants, used by pretraining only).
"""

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

DEFAULT_VENDORS = ("google", "twitter")
_SKIPPED_CATEGORY = "Component"  # skin-tone swatches and hair parts, not emoji of their own


def _is_val(short_name: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(short_name.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < val_fraction


def _folder(category: str) -> str:
    return category.replace(" & ", "_and_").replace(" ", "_").lower()


def prepare(npm_root: Path, output: Path, vendors: tuple[str, ...], val_fraction: float = 0.2) -> dict[str, int]:
    """Copies the 64 px images; returns the number of files per split."""
    counts = {"train": 0, "val": 0, "unlabeled": 0}
    for vendor in vendors:
        package = npm_root / f"emoji-datasource-{vendor}"
        if not (package / "emoji.json").is_file():
            raise SystemExit(f"{package}/emoji.json not found: npm install emoji-datasource-{vendor} first")
        for emoji in json.loads((package / "emoji.json").read_text()):
            if emoji["category"] == _SKIPPED_CATEGORY or not emoji.get(f"has_img_{vendor}"):
                continue
            split = "val" if _is_val(emoji["short_name"], val_fraction) else "train"
            source = package / "img" / vendor / "64" / emoji["image"]
            target = output / split / _folder(emoji["category"]) / f"{vendor}_{emoji['image']}"
            counts[split] += _copy(source, target)
            for variant in (emoji.get("skin_variations") or {}).values():
                if variant.get(f"has_img_{vendor}"):
                    source = package / "img" / vendor / "64" / variant["image"]
                    counts["unlabeled"] += _copy(source, output / "unlabeled" / f"{vendor}_{variant['image']}")
    return counts


def _copy(source: Path, target: Path) -> int:
    if not source.is_file():
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npm-root", required=True, help="node_modules folder holding emoji-datasource-<vendor>")
    parser.add_argument("--output", required=True, help="dataset folder to write (train/, val/, unlabeled/)")
    parser.add_argument("--vendors", nargs="+", default=list(DEFAULT_VENDORS), help="emoji-datasource vendors")
    args = parser.parse_args(argv)
    counts = prepare(Path(args.npm_root), Path(args.output), tuple(args.vendors))
    print(", ".join(f"{split}: {count}" for split, count in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
