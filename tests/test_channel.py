"""Channel models: rates and burst lengths within statistical tolerance, reproducible from the seed."""
import numpy as np
import pytest

from concealer.channel import BernoulliLoss, BitErrors, ChannelLog, GilbertElliottLoss, PatternLoss
from concealer.errors import UsageError

N = 200_000


def run(model, n=N) -> ChannelLog:
    log = ChannelLog()
    for _ in range(n):
        log.record(model.lose_next())
    log.close_burst()
    return log


def mean_burst(log: ChannelLog) -> float:
    return sum(k * v for k, v in log.bursts.items()) / sum(log.bursts.values())


@pytest.mark.parametrize("rate", [0.03, 0.1, 0.2])
def test_bernoulli_rate_within_tolerance(rate):
    log = run(BernoulliLoss(rate, np.random.default_rng(1)))
    sigma = (rate * (1 - rate) / N) ** 0.5
    assert abs(log.lost / log.sent - rate) < 4 * sigma
    assert mean_burst(log) == pytest.approx(1 / (1 - rate), rel=0.03)


@pytest.mark.parametrize("rate,burst", [(0.03, 2), (0.1, 2), (0.2, 2), (0.1, 5)])
def test_gilbert_rate_and_mean_burst(rate, burst):
    log = run(GilbertElliottLoss(rate, burst, np.random.default_rng(7)))
    # Bursts make losses correlated: allow for the variance of about N/burst independent runs.
    assert abs(log.lost / log.sent - rate) < 0.1 * rate
    assert mean_burst(log) == pytest.approx(burst, rel=0.05)
    # Geometric burst lengths: P(length 1) = 1/L.
    assert log.bursts[1] / sum(log.bursts.values()) == pytest.approx(1 / burst, rel=0.05)


def test_same_seed_same_losses_different_seed_differs():
    def draws(seed):
        model = GilbertElliottLoss(0.1, 2, np.random.default_rng(seed))
        return [model.lose_next() for _ in range(2000)]
    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_gilbert_rejects_impossible_combination():
    with pytest.raises(UsageError, match="burst"):
        GilbertElliottLoss(0.6, 1, np.random.default_rng(0))


def test_pattern_replays_and_wraps(tmp_path):
    path = tmp_path / "pattern.txt"
    path.write_text("0010\n11\n")
    model = PatternLoss.from_file(path)
    assert [model.lose_next() for _ in range(9)] == [False, False, True, False, True, True, False, False, True]
    assert model.rate == pytest.approx(0.5)
    path.write_text("01x")
    with pytest.raises(UsageError):
        PatternLoss.from_file(path)


def test_bit_errors_rate_and_range():
    data = bytearray(100_000)
    errors = BitErrors(1e-3, 0, np.random.default_rng(5))
    hits = errors.corrupt(data, 10, len(data) - 10)
    flipped = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8)).sum()
    bits = 8 * (len(data) - 20)
    assert flipped == len(hits)
    assert abs(len(hits) - 1e-3 * bits) < 5 * (1e-3 * bits) ** 0.5
    assert data[:10] == bytes(10) and data[-10:] == bytes(10)


def test_byte_bursts_stay_inside_the_range():
    data = bytearray(1000)
    errors = BitErrors(2e-3, 8, np.random.default_rng(2))
    hits = errors.corrupt(data, 100, 200)
    assert hits
    assert data[:100] == bytes(100) and data[200:] == bytes(800)
    assert any(data[100:200])
