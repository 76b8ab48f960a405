"""scripts/benchmark_backbone.py end to end at toy sizes (its figures are not tested: benchmarks are never timed
tests), plus its guard that the peers compute our function."""

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("benchmark_backbone")


@pytest.mark.slow
def test_runs_end_to_end(bench, capsys):
    args = bench.get_args_parser().parse_args(
        "--sizes 28 --iters 1 --warmup 0 --trials 2 --batch-size 1 --archs vits14 --dtypes fp32 bf16".split()
    )
    rows = bench.main(args)
    assert [(row["arch"], row["size"], row["dtype"]) for row in rows] == [
        ("vits14", 28, "fp32"),
        ("vits14", 28, "bf16"),
    ]
    for row in rows:
        assert all(row[name] > 0 for name in ("ours", "timm", "hf"))
        assert row["ours/faster"] == pytest.approx(row["ours"] / max(row["timm"], row["hf"]))
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["arch", "size", "dtype", "ours", "timm", "hf", "ours/timm", "ours/hf", "ours/faster"]
    assert table[2].split()[:3] == ["vits14", "28", "fp32"] and len(table) == 4


@pytest.mark.parametrize(
    "argv, match", [("--sizes 224 100", r"--sizes \[100\]"), ("--batch-size 0", "--batch-size must be >= 1")]
)
def test_bad_arguments_are_clear_errors(bench, argv, match):
    with pytest.raises(ValueError, match=match):
        bench.main(bench.get_args_parser().parse_args(argv.split()))


@pytest.mark.slow  # builds three ViT-S/14 and imports transformers
def test_peers_get_our_weights_and_a_mismatch_is_caught(bench):
    models = bench.build_models("vits14", 28, torch.device("cpu"))
    x = torch.randn(2, 3, 28, 28)
    bench.check_same_outputs(models, x)  # same weights: same function
    with torch.no_grad():
        bias = models["timm"].blocks[3].mlp.fc2.bias
        bias.add_(torch.randn_like(bias))  # a uniform shift would vanish in the final LayerNorm
    with pytest.raises(RuntimeError, match="timm output differs from ours"):
        bench.check_same_outputs(models, x)
