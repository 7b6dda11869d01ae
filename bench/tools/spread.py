"""Min / median / max over rounds, as every section of BENCHMARKS.md reports them."""


def median(values):
    values = sorted(values)
    n = len(values)
    if n == 0:
        return None
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def spread(values):
    """(min, median, max) of the values that are numbers; (None, None, None) if none are."""
    values = [v for v in values if isinstance(v, (int, float))]
    if not values:
        return (None, None, None)
    return (min(values), median(values), max(values))


def number(value, digits=1):
    if value is None:
        return "—"
    if digits == 0 or (isinstance(value, int) and not isinstance(value, bool)):
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def cell(values, digits=1, unit=""):
    """'median (min–max)' of the rounds, or the one value when there was one round."""
    low, mid, high = spread(values)
    if mid is None:
        return "—"
    suffix = f" {unit}" if unit else ""
    if low == high:
        return f"{number(mid, digits)}{suffix}"
    return f"{number(mid, digits)}{suffix} ({number(low, digits)}–{number(high, digits)})"


def ratio(a, b, digits=2):
    if a is None or b in (None, 0):
        return "—"
    return f"{a / b:.{digits}f}×"
