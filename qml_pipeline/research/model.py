"""Phase 11: the seed's fusion network (OHLCV window stream + context stream), trained deterministically
(inputs and settings: model_data.py; the network and torch runtime: model_network.py).

Inputs, all row-aligned (row i of each is the same trade; `align_inputs` reorders frames by trade_id):
- windows: float32 array (n, 50, 5), the normalised OHLCV bars before each decision;
- context: polars frame with trade_id, decision_time and the context columns of `CONTEXT_FEATURES`
  (NULLs allowed), optionally `direction` ('BULLISH'/'BEARISH', 'LONG'/'SHORT' or +1/-1);
- labels: polars frame with trade_id, outcome ('WIN', 'LOSS', 'TIMEOUT', ...), r_multiple and,
  for purging, exit_time.

The context vector follows the seed's "Context Feature Vector" table. Every statistic the
normalisation needs is fitted on the training rows only (`ContextNormaliser`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

# model_network sets the OpenMP wait policy before torch loads
from qml_pipeline.research.model_network import FusionNet, torch, torch_runtime
from qml_pipeline.research.model_data import (ContextNormaliser, ModelConfig, check_inputs, data_fingerprint,
                                              inner_split, targets)
from qml_pipeline.timeutil import epoch_ms
from torch import nn

MODEL_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Training and prediction
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainedModel:
    net: FusionNet
    config: ModelConfig
    normaliser: ContextNormaliser
    fingerprint: str
    metrics: dict
    window_bars: int

    def predict(self, windows: np.ndarray, context: pl.DataFrame) -> np.ndarray:
        """P(win) per trade (classification) or predicted R multiple (regression), float64 (n,)."""
        check_inputs(windows, context)
        if windows.shape[1] != self.window_bars:
            raise ValueError(f"model was trained on {self.window_bars}-bar windows, got {windows.shape[1]}")
        x_ctx = self.normaliser.transform(context)
        with torch_runtime(self.config) as device:
            self.net.to(device).eval()
            out = []
            step = max(256, self.config.batch_size * 4)
            with torch.no_grad():
                for i in range(0, windows.shape[0], step):
                    w = torch.from_numpy(np.ascontiguousarray(windows[i:i + step], dtype=np.float32)).to(device)
                    c = torch.from_numpy(x_ctx[i:i + step]).to(device)
                    y = self.net(w, c)
                    out.append((torch.sigmoid(y) if self.config.head == "classification" else y).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def save(self, path: str | Path) -> Path:
        """Writes the state dict to `path` and config, normaliser, fingerprint and metrics to
        `path` with suffix .json. Returns the sidecar's path."""
        path = Path(path)
        if path.suffix == ".json":
            raise ValueError("give the weights file path (e.g. model.pt); the .json sidecar is written beside it")
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, path)
        sidecar = path.with_suffix(".json")
        sidecar.write_text(json.dumps({
            "format_version": MODEL_FORMAT_VERSION,
            "weights_file": path.name,
            "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "config": self.config.to_dict(),
            "normaliser": self.normaliser.to_dict(),
            "data_fingerprint": self.fingerprint,
            "window_bars": self.window_bars,
            "metrics": self.metrics,
            "torch_version": torch.__version__,
        }, indent=2, default=_json_default))
        return sidecar

    @classmethod
    def load(cls, path: str | Path) -> TrainedModel:
        path = Path(path)
        sidecar = path.with_suffix(".json")
        if not path.exists() or not sidecar.exists():
            raise FileNotFoundError(f"need both {path} and {sidecar}")
        meta = json.loads(sidecar.read_text())
        if meta.get("format_version") != MODEL_FORMAT_VERSION:
            raise ValueError(f"{sidecar} has format_version {meta.get('format_version')}, expected {MODEL_FORMAT_VERSION}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != meta["weights_sha256"]:
            raise ValueError(f"{path} does not match the checksum in {sidecar}; the pair was mixed up or corrupted")
        config = ModelConfig.from_dict(meta["config"])
        normaliser = ContextNormaliser.from_dict(meta["normaliser"])
        with torch_runtime(config):
            net = FusionNet(normaliser.width, config)
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net.eval()
        return cls(net=net, config=config, normaliser=normaliser, fingerprint=meta["data_fingerprint"],
                   metrics=meta["metrics"], window_bars=int(meta["window_bars"]))


def _json_default(o: object) -> object:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _loss_fn(config: ModelConfig) -> nn.Module:
    return nn.BCEWithLogitsLoss() if config.head == "classification" else nn.MSELoss()


def _evaluate_loss(net: FusionNet, w: torch.Tensor, c: torch.Tensor, y: torch.Tensor, loss: nn.Module,
                   step: int) -> float:
    net.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, w.shape[0], step):
            total += float(loss(net(w[i:i + step], c[i:i + step]), y[i:i + step])) * min(step, w.shape[0] - i)
    return total / max(1, w.shape[0])


def train_model(windows: np.ndarray, context: pl.DataFrame, labels: pl.DataFrame,
                config: ModelConfig = ModelConfig()) -> TrainedModel:
    """Fit a FusionNet. Rows of windows, context and labels must describe the same trades in the
    same order (see `align_inputs`). Early stopping restores the weights of the best validation epoch."""
    check_inputs(windows, context, labels)
    if windows.shape[0] < 2:
        raise ValueError("need at least two trades to train")
    y_all = targets(labels, config)
    decision_ms = epoch_ms(context["decision_time"])
    exit_ms = epoch_ms(labels["exit_time"]) if "exit_time" in labels.columns else None
    fit_idx, val_idx = inner_split(decision_ms, exit_ms, config.val_fraction, config.min_val)
    if fit_idx.size == 0:
        raise ValueError("no training trades left after the early-stopping split; lower val_fraction")

    normaliser = ContextNormaliser.for_frame(context).fit(context[fit_idx])
    x_ctx = normaliser.transform(context)
    fingerprint = data_fingerprint(windows, context, labels)

    t_start = time.perf_counter()
    with torch_runtime(config) as device:
        torch.manual_seed(config.seed)
        np_rng = np.random.default_rng(config.seed)
        net = FusionNet(normaliser.width, config).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        loss = _loss_fn(config)

        def tensors(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return (torch.from_numpy(np.ascontiguousarray(windows[idx], dtype=np.float32)).to(device),
                    torch.from_numpy(x_ctx[idx]).to(device), torch.from_numpy(y_all[idx]).to(device))

        w_fit, c_fit, y_fit = tensors(fit_idx)
        w_val, c_val, y_val = tensors(val_idx)
        best_state, best_val, best_epoch, bad_epochs = None, math.inf, 0, 0
        history = []
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            net.train()
            perm = torch.from_numpy(np_rng.permutation(len(fit_idx))).to(device)
            total = 0.0
            for i in range(0, len(fit_idx), config.batch_size):
                b = perm[i:i + config.batch_size]
                opt.zero_grad(set_to_none=True)
                batch_loss = loss(net(w_fit[b], c_fit[b]), y_fit[b])
                batch_loss.backward()
                if config.grad_clip > 0:
                    nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
                opt.step()
                total += float(batch_loss.detach()) * len(b)
            train_loss = total / len(fit_idx)
            val_loss = _evaluate_loss(net, w_val, c_val, y_val, loss, 1024) if len(val_idx) else float("nan")
            history.append({"epoch": epoch, "train_loss": train_loss,
                            "val_loss": val_loss if len(val_idx) else None,
                            "seconds": time.perf_counter() - t0})
            if not len(val_idx):
                continue
            if val_loss < best_val:
                best_val, best_epoch, bad_epochs = val_loss, epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad_epochs += 1
                if bad_epochs >= config.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
    seconds = time.perf_counter() - t_start
    metrics = {
        "n_trades": int(windows.shape[0]), "n_fit": len(fit_idx), "n_val": len(val_idx),
        "n_purged": int(windows.shape[0] - len(fit_idx) - len(val_idx)),
        "epochs_run": len(history), "best_epoch": best_epoch or len(history),
        "best_val_loss": best_val if math.isfinite(best_val) else None,
        "train_seconds": seconds, "seconds_per_epoch": seconds / max(1, len(history)),
        "device": str(device), "num_threads": config.num_threads,
        "positive_rate": float(y_all.mean()) if config.head == "classification" else None,
        "history": history,
    }
    return TrainedModel(net=net, config=config, normaliser=normaliser, fingerprint=fingerprint,
                        metrics=metrics, window_bars=int(windows.shape[1]))
