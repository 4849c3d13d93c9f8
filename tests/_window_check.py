"""The window guarantees, as checks over a list of grants (shared by the memory and Redis
tests): no window of length T ever holds more than N (sliding), and no window aligned to the
clock holds more than N (fixed)."""

from __future__ import annotations


def assert_no_window_over(
    grants: list[tuple[int, int, bool]], capacity: int, window_ns: int
) -> None:
    """Assert that for any two records i <= j (sorted by time) with ``t_j - t_i < T`` whose
    later one is a grant, the tokens of records i..j sum to at most ``capacity``.

    ``grants`` holds (time ns, tokens, is_grant); records that are not grants are charges,
    which may exceed the capacity themselves (debt) but must be waited off by every grant.
    Without charges this is the plain rule over every pair of grants.
    """
    ordered = sorted(grants, key=lambda g: g[0])
    for j, (t_j, _, is_grant) in enumerate(ordered):
        if not is_grant:
            continue
        held = 0
        for i in range(j, -1, -1):
            t_i, tokens, _ = ordered[i]
            if t_j - t_i >= window_ns:
                break
            held += tokens
            assert held <= capacity, (
                f"{held} tokens in [{t_i}, {t_j}] ns, a span of {t_j - t_i} ns < T="
                f"{window_ns}: more than N={capacity}; grants: {ordered}"
            )


def assert_no_fixed_window_over(
    grants: list[tuple[int, int, bool]], capacity: int, window_ns: int, start_ns: int = 0
) -> None:
    """Assert that each window ``[start + k*T, start + (k+1)*T)`` holds at most ``capacity``
    tokens at each grant in it, counting the debt carried in from earlier windows (what
    charges, records that are not grants, put past the capacity: N per window pays it off).
    """
    carried = 0  # debt carried into the current window
    window = None
    held = 0
    for t, tokens, is_grant in sorted(grants, key=lambda g: g[0]):
        index = (t - start_ns) // window_ns
        if index != window:
            if window is not None:
                carried = max(0, carried + held - capacity * (index - window))
            window, held = index, 0
        held += tokens
        assert not is_grant or carried + held <= capacity, (
            f"window {index} ({index * window_ns + start_ns} ns on) holds {held} tokens and "
            f"{carried} of debt at {t} ns: more than N={capacity}; grants: {sorted(grants)}"
        )
