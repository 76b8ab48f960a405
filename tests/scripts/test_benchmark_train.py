"""scripts/benchmark_train.py at toy sizes: every case runs in its own process and reports its figures."""

import pytest


@pytest.mark.slow
def test_benchmark_train_prints_a_row_per_case(load_script, capsys: pytest.CaptureFixture) -> None:
    bench = load_script("benchmark_train")
    bench.main(["--cases", "tiny", "small", "--batch-size", "2", "--iterations", "1", "--warmup", "0"])
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"tiny", "small"}
    for row in rows.values():
        seconds = float(row[2])
        assert seconds > 0 and float(row[-2]) > 50  # peak MB; the last column is the warm-up time
