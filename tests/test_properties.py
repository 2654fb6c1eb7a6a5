"""Properties over many random inputs (hypothesis): node lookup and the fixed-step plan."""

from hypothesis import given, settings
from hypothesis import strategies as st

from contham.fields import TimeNodes
from contham.solvers import plan_steps

dts = st.floats(0.01, 2.0)
ns = st.integers(2, 40)


@given(ns, dts, st.floats(-5.0, 100.0))
def test_piecewise_lookup_contains_t(n, dt, t):
    nodes = TimeNodes(n, dt, "piecewise")
    j, w = nodes.locate(t)
    assert w == 0.0 and 0 <= j < n
    times = nodes.times
    if t >= 0:
        assert times[j] <= t and (j == n - 1 or t < times[j + 1])


@given(ns, dts, st.floats(0.0, 1.0))
def test_linear_lookup_interpolates(n, dt, frac):
    nodes = TimeNodes(n, dt, "linear")
    t = frac * (n - 1) * dt
    j, w = nodes.locate(t)
    assert 0 <= w < 1 and abs((j + w) * dt - t) <= 1e-9 * max(1.0, t)


@settings(max_examples=200)
@given(ns, dts, st.one_of(st.none(), st.floats(0.003, 1.0)), st.lists(st.floats(0.0, 1.0), max_size=4))
def test_plan_tiles_interval_and_respects_breaks(n, dt, step_size, fracs):
    nodes = TimeNodes(n, dt, "piecewise")
    end = n * dt
    times = sorted({0.0, end, *(f * end for f in fracs)})
    times = [t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 1e-9]
    plan, outputs = plan_steps(times, nodes.breaks, step_size, nodes)
    assert abs(plan[0][0] - times[0]) < 1e-12
    for (s, h, node), nxt in zip(plan, plan[1:] + [(times[-1], 0.0, None)]):
        assert h > 0 and abs(s + h - nxt[0]) <= 1e-9 * max(1.0, end)
        if step_size is not None:
            assert h <= step_size * (1 + 1e-9)
        # the whole step lies in the interval of the node it uses
        assert node * dt - 1e-9 <= s and s + h <= (node + 1) * dt + 1e-9 or node == n - 1
    assert len(outputs) == len(times) - 1 and outputs[-1] == len(plan)
