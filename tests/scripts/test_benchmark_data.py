"""scripts/benchmark_data.py at toy sizes: it measures the loader training builds, against the plain pipeline."""

import pytest


@pytest.mark.slow
def test_benchmark_data_prints_both_settings(load_script, capsys: pytest.CaptureFixture) -> None:
    bench = load_script("benchmark_data")
    args = ["--num-images", "6", "--num-workers", "1", "--batch-size", "2", "--trials", "1", "--repeats", "1"]
    args += ["--global-crops-size", "28", "--local-crops-size", "14", "--local-crops-number", "2"]
    bench.main(bench.get_args_parser().parse_args(args))
    lines = capsys.readouterr().out.splitlines()
    rows = [line.rsplit(maxsplit=3) for line in lines[2:]]
    assert [row[0] for row in rows] == ["1 process", "DataLoader, 1 workers"]
    for _, ours, plain, ratio in rows:
        assert float(ours) > 0 and float(plain) > 0 and float(ratio) > 0
