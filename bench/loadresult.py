"""Results of ``onecard load``: HdrHistogram percentiles, a JSON file, a PNG plot, and the
comparison of two result files."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from hdrh.histogram import HdrHistogram

from onecard.core.terminal import bucket_values_us

PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
HIGHEST_US = 60_000_000


def hdr_from_buckets(buckets: np.ndarray) -> HdrHistogram:
    """An HdrHistogram (1 µs .. 60 s, 3 significant digits) from the generator's buckets."""
    hist = HdrHistogram(1, HIGHEST_US, 3)
    values = bucket_values_us()
    for i in np.flatnonzero(buckets):
        hist.record_value(max(int(values[i]), 1), int(buckets[i]))
    return hist


def percentiles_ms(hist: HdrHistogram) -> dict[str, float]:
    if hist.get_total_count() == 0:
        return {}
    out = {f"p{p:g}": hist.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
    out["max"] = hist.get_max_value() / 1000
    return out


@dataclass
class LoadResult:
    protocol: str
    mode: str                         # "closed" (window per connection) or "open" (fixed rate)
    connections: int
    processes: int
    window: int
    rate: float                       # open loop: requests per second asked for
    seconds: float
    completed: int
    sent: int
    tps: float
    latency_ms: dict[str, float]
    codes: dict[str, int]
    unmatched: int
    overloaded: bool = False          # open loop: in-flight limit hit, the rate was not kept
    timeline: list[tuple[float, int]] = field(default_factory=list)
    late_sends: int = 0               # open loop: requests the generator sent > 0.1 ms late
    send_lag_max_ms: float = 0.0      # open loop: the latest any request left after its time
    histogram: str = ""               # HdrHistogram, encoded (base64 of its compressed form)
    # Latency of the replies other than 96: what the requests a shedding switch admitted saw.
    latency_answered_ms: dict[str, float] = field(default_factory=dict)

    def hdr(self) -> HdrHistogram:
        return HdrHistogram.decode(base64.b64decode(self.histogram))

    def summary(self) -> str:
        lat = "  ".join(f"{k} {v:.3f} ms" for k, v in self.latency_ms.items())
        total = max(self.completed, 1)
        codes = "  ".join(f"{c} {n:,} ({100 * n / total:.1f}%)"
                          for c, n in sorted(self.codes.items(), key=lambda kv: -kv[1]))
        how = (f"window {self.window}" if self.mode == "closed"
               else f"open loop at {self.rate:,.0f}/s")
        lines = [f"onecard load: {self.protocol}, {self.connections} connections ({how}), "
                 f"{self.processes} generator process(es), {self.seconds:.1f} s",
                 f"  completed {self.completed:,} of {self.sent:,} sent ({self.tps:,.0f}/s)",
                 f"  latency   {lat}",
                 f"  codes     {codes}"]
        if self.codes.get("96") and self.latency_answered_ms:
            lines.append("  answered (not 96) " + "  ".join(
                f"{k} {v:.3f} ms" for k, v in self.latency_answered_ms.items()))
        if self.unmatched:
            lines.append(f"  unmatched replies {self.unmatched}")
        if self.mode == "open":
            lines.append(f"  generator {100 * self.late_sends / max(self.sent, 1):.3f}% of "
                         f"requests sent over 0.1 ms after their time (latest "
                         f"{self.send_lag_max_ms:.3f} ms; that lateness counts in the latency)")
        if self.overloaded:
            lines.append("  overloaded: a connection reached the in-flight limit; the switch "
                         "did not keep up with the rate asked for")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> LoadResult:
        data = json.loads(Path(path).read_text())
        data["timeline"] = [tuple(x) for x in data.get("timeline", [])]
        return cls(**data)


def encode_hdr(hist: HdrHistogram) -> str:
    return base64.b64encode(hist.encode()).decode()


def plot(results: list[tuple[str, LoadResult]], path: str | Path) -> None:
    """Latency by percentile (HdrHistogram style) and throughput over time, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat_ax, tps_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    ticks = [0, 50, 90, 99, 99.9, 99.99, 99.999]
    for label, r in results:
        hist = r.hdr()
        ps = np.concatenate([np.linspace(0, 90, 46), 100 - np.logspace(1, -3.3, 80)])
        xs = 1 / (1 - ps / 100)
        ys = [hist.get_value_at_percentile(p) / 1000 for p in ps]
        lat_ax.plot(xs, ys, label=label)
        if len(r.timeline) > 1:
            t = np.array([x[0] for x in r.timeline])
            n = np.array([x[1] for x in r.timeline])
            tps_ax.plot(t[1:], np.diff(n) / np.diff(t), label=label)
    lat_ax.set_xscale("log")
    lat_ax.set_xticks([1 / (1 - p / 100) for p in ticks], [f"{p:g}%" for p in ticks])
    lat_ax.set_xlabel("percentile")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_title("latency by percentile")
    lat_ax.grid(True, which="both", alpha=0.3)
    tps_ax.set_xlabel("seconds")
    tps_ax.set_ylabel("replies per second")
    tps_ax.set_title("throughput")
    tps_ax.grid(True, alpha=0.3)
    tps_ax.set_ylim(bottom=0)
    for ax in (lat_ax, tps_ax):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(a: LoadResult, b: LoadResult, names: tuple[str, str] = ("A", "B")) -> str:
    """A table of the two runs and B/A ratios."""
    rows = [("throughput (/s)", a.tps, b.tps)]
    for key in a.latency_ms:
        if key in b.latency_ms:
            rows.append((f"latency {key} (ms)", a.latency_ms[key], b.latency_ms[key]))
    ok_a = a.codes.get("00", 0) / max(a.completed, 1)
    ok_b = b.codes.get("00", 0) / max(b.completed, 1)
    rows.append(("approved share", ok_a, ok_b))
    width = max(len(r[0]) for r in rows)
    out = [f"{'':{width}}  {names[0]:>14}  {names[1]:>14}  {'B/A':>7}"]
    for name, x, y in rows:
        ratio = f"{y / x:7.2f}" if x else "      -"
        out.append(f"{name:{width}}  {x:14,.3f}  {y:14,.3f}  {ratio}")
    return "\n".join(out)
