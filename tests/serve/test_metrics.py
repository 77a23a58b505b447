"""The Prometheus histogram of `ServerStats`: cumulative buckets, +Inf holding every observation."""

from __future__ import annotations

from mambalab.serve.metrics import Histogram


def test_histogram_buckets_are_cumulative():
    h = Histogram((0.01, 1.0, 10.0))
    for seconds in (0.003, 0.01, 0.5, 11.0):
        h.observe(seconds)
    assert h.lines("t") == ['t_bucket{le="0.01"} 2', 't_bucket{le="1"} 3', 't_bucket{le="10"} 3',
                            't_bucket{le="+Inf"} 4', "t_sum 11.513000", "t_count 4"]
