import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _version() -> str:
    text = (HERE / "dinov2" / "__init__.py").read_text()
    return re.search(r'^__version__ = "(.+)"$', text, re.MULTILINE).group(1)


def _requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="dinov2",
    version=_version(),
    description="Self-supervised pretraining of Vision Transformers with DINOv2 (DINO + iBOT + KoLeo)",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["dinov2", "dinov2.*"]),
    package_data={"": ["*.yaml"], "dinov2.configs": ["train/*.yaml", "eval/*.yaml"]},
    install_requires=_requirements("requirements.txt"),
    extras_require={
        # the tests also run the benchmarks at toy sizes, so dev includes the benchmark peers
        "dev": _requirements("requirements-dev.txt") + _requirements("requirements-bench.txt"),
        "bench": _requirements("requirements-bench.txt"),
        "xformers": ["xformers"],
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
    ],
)
