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
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qml_pipeline.research.evaluation import evaluate_models  # noqa: E402
from qml_pipeline.research.model import torch, train_model  # noqa: E402
from qml_pipeline.research.model_data import ModelConfig  # noqa: E402
from tests.synthetic import model_set  # noqa: E402



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
        windows, context, labels = model_set(n)
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
