"""Time the phase-11 fusion net on CPU: per epoch and whole training, for a sample-sized set and a
large synthetic one.

    .venv/bin/python benchmarks/bench_model.py                 # 400 and 20,000 trades
    .venv/bin/python benchmarks/bench_model.py --sizes 400 --epochs 10 --walk-forward
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from qml_pipeline.evaluation import evaluate_models
from qml_pipeline.model import ModelConfig, torch, train_model

TS = pl.Datetime("ms", "UTC")


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    step = max(1, int(5 * 365 * 24 * 60 / n))  # spread over ~5 years
    times = [t0 + timedelta(minutes=step * i) for i in range(n)]
    z = rng.normal(size=n)
    d = rng.choice([-1, 1], size=n)
    win = -d * z + rng.normal(size=n) > 0.2
    context = pl.DataFrame({
        "trade_id": [f"t{i}" for i in range(n)], "decision_time": times,
        "funding_rate": z * 1e-4, "funding_rate_z30d": z, "funding_rate_change_8h": rng.normal(size=n) * 1e-5,
        "oi_change_24h": rng.normal(size=n) * 0.03, "oi_change_7d": rng.normal(size=n) * 0.1,
        "oi_percentile_30d": rng.uniform(0, 100, n), "distance_to_liq_cluster": [None] * n,
        "base_confidence": rng.uniform(0.4, 0.8, n), "direction": np.where(d > 0, "BULLISH", "BEARISH"),
    }).with_columns(pl.col("decision_time").cast(TS), pl.col("distance_to_liq_cluster").cast(pl.Float64))
    labels = pl.DataFrame({
        "trade_id": context["trade_id"], "outcome": np.where(win, "WIN", "LOSS"),
        "r_multiple": np.where(win, 2.0, -1.0), "exit_time": [t + timedelta(hours=12) for t in times],
    }).with_columns(pl.col("exit_time").cast(TS))
    return rng.normal(size=(n, 50, 5)).astype(np.float32), context, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[400, 20_000])
    ap.add_argument("--epochs", type=int, nargs="+", default=[20, 5], help="epochs per size (last repeats)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sequence", choices=["lstm", "attention"], default="lstm", help="stream A's sequence layer")
    ap.add_argument("--walk-forward", action="store_true", help="also time evaluate_models (5 folds) per size")
    args = ap.parse_args()

    print(f"torch {torch.__version__} on {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, cuda available: {torch.cuda.is_available()} (forced cpu), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()}")
    for i, n in enumerate(args.sizes):
        epochs = args.epochs[min(i, len(args.epochs) - 1)]
        windows, context, labels = synthetic(n)
        cfg = ModelConfig(epochs=epochs, batch_size=args.batch_size, num_threads=args.threads, device="cpu",
                          sequence=args.sequence,
                          patience=10 ** 6)  # run every epoch: the benchmark times them, not early stopping
        t = time.perf_counter()
        model = train_model(windows, context, labels, cfg)
        total = time.perf_counter() - t
        per_epoch = [h["seconds"] for h in model.metrics["history"]]
        t = time.perf_counter()
        model.predict(windows, context)
        predict = time.perf_counter() - t
        m = model.metrics
        print(f"n={n:>6} (fit {m['n_fit']}, val {m['n_val']}), {len(per_epoch)} epochs, batch {args.batch_size}, {args.sequence}: "
              f"epoch median {statistics.median(per_epoch):.3f}s (first {per_epoch[0]:.3f}s, "
              f"max {max(per_epoch):.3f}s); training total {total:.2f}s incl. set-up; "
              f"predict all {predict:.2f}s; {statistics.median(per_epoch) / m['n_fit'] * 1e3:.3f} ms/trade/epoch")
        if args.walk_forward:
            t = time.perf_counter()
            report = evaluate_models(windows, context, labels, config=cfg, n_folds=5)
            print(f"         walk-forward 5 folds + bootstrap: {time.perf_counter() - t:.1f}s; "
                  f"{report.verdict.split('. ')[0]}.")


if __name__ == "__main__":
    main()
