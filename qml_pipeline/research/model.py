"""Phase 11: the seed's fusion network (OHLCV window stream + context stream), trained deterministically.

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
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

# OpenMP threads that spin while they wait run ~5x slower when other processes share the cores
# (Dagster's multiprocess executor, DuckDB queries; measured on 2 cores). libgomp reads this once,
# when torch loads it, so it is set before the import and only if the user has not chosen.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch
from torch import nn

MODEL_FORMAT_VERSION = 1
WINDOW_CHANNELS = 5
# Patterns that never became a position: no label to learn from (trades.OUTCOMES spells them).
UNFILLED_OUTCOMES = ("NOT_FILLED", "INVALIDATED")

FeatureKind = Literal["as_is", "percentile", "standardise"]


@dataclass(frozen=True)
class FeatureSpec:
    """One context input. kind says how it becomes a network input:
    as_is: already on a unit scale (a z-score, a probability), only clipped;
    percentile: a 0..100 percentile, divided by 100;
    standardise: (x - mean) / std with mean and std fitted on the training rows, then clipped."""

    name: str
    kind: FeatureKind
    unit: str


CONTEXT_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("funding_rate_z30d", "as_is",
                "z-score of the funding rate against its trailing 30 days (the seed's funding input)"),
    FeatureSpec("funding_rate_change_8h", "standardise",
                "raw change of the funding rate over 8h, fraction per interval (0.0001 = 0.01%)"),
    FeatureSpec("oi_change_24h", "standardise", "open-interest change over 24h, fraction (0.032 = +3.2%)"),
    FeatureSpec("oi_change_7d", "standardise", "open-interest change over 7d, fraction"),
    FeatureSpec("oi_percentile_30d", "percentile", "percentile of OI within its trailing 30 days, 0..100"),
    FeatureSpec("distance_to_liq_cluster", "standardise", "distance to the nearest liquidation cluster in ATRs"),
    FeatureSpec("base_confidence", "as_is", "the pattern detector's confidence, probability 0..1"),
)
# Added when the context frame has a `direction` column: the sign of the trade (+1 long, -1 short)
# and the funding z-score seen from the trade's side (positive = the crowd is positioned against
# the trade, the seed's "fuel"), which a linear model cannot otherwise form.
DIRECTION_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("direction_sign", "as_is", "+1 bullish/long, -1 bearish/short"),
    FeatureSpec("funding_fuel", "as_is", "-direction_sign * funding_rate_z30d"),
)
_DIRECTION_WORDS = {"BULLISH": 1.0, "LONG": 1.0, "BUY": 1.0, "BEARISH": -1.0, "SHORT": -1.0, "SELL": -1.0}


# ---------------------------------------------------------------------------------------------
# Context normalisation
# ---------------------------------------------------------------------------------------------

def direction_sign(context: pl.DataFrame) -> np.ndarray:
    """+1 / -1 per row from a `direction` column (words or numbers); NaN where unknown."""
    col = context["direction"]
    if col.dtype == pl.String or col.dtype == pl.Categorical or col.dtype == pl.Enum:
        words = col.cast(pl.String).str.to_uppercase()
        unknown = set(words.drop_nulls().unique().to_list()) - set(_DIRECTION_WORDS)
        if unknown:
            raise ValueError(f"direction has values {sorted(unknown)}; expected one of {sorted(_DIRECTION_WORDS)}")
        return words.replace_strict(_DIRECTION_WORDS, default=None, return_dtype=pl.Float64).to_numpy().astype(np.float64)
    values = col.cast(pl.Float64).to_numpy().astype(np.float64)
    return np.sign(values)


def _raw_feature_matrix(context: pl.DataFrame, specs: tuple[FeatureSpec, ...]) -> np.ndarray:
    base_names = [s.name for s in specs if s.name not in {d.name for d in DIRECTION_FEATURES}]
    missing = [n for n in base_names if n not in context.columns]
    if missing:
        raise ValueError(f"context frame lacks columns {missing}; it has {context.columns}. "
                         "Add them (all-NULL is allowed) before training or predicting.")
    cols = []
    for s in specs:
        if s.name == "direction_sign":
            cols.append(direction_sign(context))
        elif s.name == "funding_fuel":
            cols.append(-direction_sign(context) * context["funding_rate_z30d"].cast(pl.Float64).to_numpy())
        else:
            cols.append(context[s.name].cast(pl.Float64).to_numpy())
    out = np.column_stack(cols).astype(np.float64) if cols else np.zeros((context.height, 0))
    out[~np.isfinite(out)] = np.nan
    return out


@dataclass
class ContextNormaliser:
    """Turns context columns into network inputs: one value per feature (NaN -> 0 after scaling)
    followed by one missing-indicator per feature. `fit` on training rows only."""

    specs: tuple[FeatureSpec, ...] = CONTEXT_FEATURES
    clip: float = 5.0
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    fitted: bool = False

    @classmethod
    def for_frame(cls, context: pl.DataFrame, specs: tuple[FeatureSpec, ...] = CONTEXT_FEATURES,
                  clip: float = 5.0) -> ContextNormaliser:
        """A normaliser over `specs`, plus the direction features when the frame has `direction`."""
        if "direction" in context.columns:
            specs = tuple(specs) + DIRECTION_FEATURES
        return cls(specs=tuple(specs), clip=clip)

    @property
    def feature_names(self) -> list[str]:
        return [s.name for s in self.specs] + [f"{s.name}_missing" for s in self.specs]

    @property
    def width(self) -> int:
        return 2 * len(self.specs)

    def fit(self, context: pl.DataFrame) -> ContextNormaliser:
        raw = _raw_feature_matrix(context, self.specs)
        self.means, self.stds = {}, {}
        for j, s in enumerate(self.specs):
            if s.kind != "standardise":
                continue
            v = raw[:, j][np.isfinite(raw[:, j])]
            mean = float(v.mean()) if v.size else 0.0
            std = float(v.std()) if v.size > 1 else 0.0
            self.means[s.name] = mean
            self.stds[s.name] = std if std > 0 else 1.0
        self.fitted = True
        return self

    def transform(self, context: pl.DataFrame) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError("ContextNormaliser.transform called before fit")
        if any(s.name == "direction_sign" for s in self.specs) and "direction" not in context.columns:
            raise ValueError("this normaliser was fitted with a `direction` column; the frame has none")
        raw = _raw_feature_matrix(context, self.specs)
        values = np.empty_like(raw)
        for j, s in enumerate(self.specs):
            x = raw[:, j]
            if s.kind == "percentile":
                x = x / 100.0
            elif s.kind == "standardise":
                x = (x - self.means[s.name]) / self.stds[s.name]
            values[:, j] = x
        missing = np.isnan(values)
        values = np.clip(np.nan_to_num(values, nan=0.0), -self.clip, self.clip)
        return np.hstack([values, missing.astype(np.float64)]).astype(np.float32)

    def to_dict(self) -> dict:
        return {"specs": [asdict(s) for s in self.specs], "clip": self.clip,
                "means": self.means, "stds": self.stds, "fitted": self.fitted}

    @classmethod
    def from_dict(cls, d: dict) -> ContextNormaliser:
        return cls(specs=tuple(FeatureSpec(**s) for s in d["specs"]), clip=float(d["clip"]),
                   means={k: float(v) for k, v in d["means"].items()},
                   stds={k: float(v) for k, v in d["stds"].items()}, fitted=bool(d["fitted"]))


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    """Training settings. head='classification' predicts P(outcome in positive_outcomes);
    head='regression' predicts r_multiple. Early stopping watches the loss on the last
    val_fraction of the training trades in decision-time order (purged like an outer fold)."""

    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    dropout: float = 0.3
    weight_decay: float = 1e-4
    seed: int = 0
    head: Literal["classification", "regression"] = "classification"
    patience: int = 5
    val_fraction: float = 0.15
    min_val: int = 20
    conv_channels: int = 32
    pattern_width: int = 128
    context_width: int = 32
    fused_width: int = 64
    pool: int = 2
    sequence: Literal["lstm", "attention"] = "lstm"
    grad_clip: float = 1.0
    num_threads: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    positive_outcomes: tuple[str, ...] = ("WIN",)

    def __post_init__(self) -> None:
        if self.head not in ("classification", "regression"):
            raise ValueError(f"head must be 'classification' or 'regression', got {self.head!r}")
        if self.sequence not in ("lstm", "attention"):
            raise ValueError(f"sequence must be 'lstm' or 'attention', got {self.sequence!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["positive_outcomes"] = list(self.positive_outcomes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["positive_outcomes"] = tuple(d.get("positive_outcomes", ("WIN",)))
        return cls(**d)


class AttentionPool(nn.Module):
    """The attention alternative for stream A: one self-attention encoder layer over the conv
    features (with learned positions), then attention-weighted pooling to `width`."""

    def __init__(self, channels: int, width: int, max_steps: int = 256, heads: int = 4) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, max_steps, channels))
        self.encoder = nn.TransformerEncoderLayer(channels, heads, dim_feedforward=2 * channels, dropout=0.0,
                                                  batch_first=True)
        self.score = nn.Linear(channels, 1)
        self.out = nn.Linear(channels, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.position.shape[1]:
            raise ValueError(f"window too long for the attention encoder ({x.shape[1]} > {self.position.shape[1]} steps)")
        h = self.encoder(x + self.position[:, : x.shape[1]])
        weights = torch.softmax(self.score(h), dim=1)
        return torch.relu(self.out((weights * h).sum(dim=1)))


class FusionNet(nn.Module):
    """Stream A: (batch, bars, 5) window -> Conv1d x2 -> max-pool -> LSTM (last hidden state) or
    attention pooling -> 128. Stream B: context vector -> Dense(32). Concatenate (160) ->
    Dense(64) + dropout -> one output (a logit for classification, an R multiple for regression)."""

    def __init__(self, context_dim: int, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        c = config.conv_channels
        self.conv = nn.Sequential(
            nn.Conv1d(WINDOW_CHANNELS, c, kernel_size=5, padding=2), nn.ReLU(),
            nn.Conv1d(c, 2 * c, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool1d(config.pool) if config.pool > 1 else nn.Identity(),
        )
        self.sequence = config.sequence
        if config.sequence == "lstm":
            self.lstm = nn.LSTM(2 * c, config.pattern_width, batch_first=True)
        else:
            self.attention = AttentionPool(2 * c, config.pattern_width)
        self.context = nn.Sequential(nn.Linear(context_dim, config.context_width), nn.ReLU())
        self.fused = nn.Sequential(
            nn.Linear(config.pattern_width + config.context_width, config.fused_width), nn.ReLU(),
            nn.Dropout(config.dropout),
        )
        self.head = nn.Linear(config.fused_width, 1)

    def forward(self, window: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        a = self.conv(window.transpose(1, 2)).transpose(1, 2)
        if self.sequence == "lstm":
            _, (h, _) = self.lstm(a)
            pattern = h[-1]
        else:
            pattern = self.attention(a)
        fused = self.fused(torch.cat([pattern, self.context(context)], dim=1))
        return self.head(fused).squeeze(1)


# ---------------------------------------------------------------------------------------------
# Input checks and targets
# ---------------------------------------------------------------------------------------------

def align_inputs(trade_ids: list[str] | np.ndarray, windows: np.ndarray, context: pl.DataFrame,
                 labels: pl.DataFrame | None = None) -> tuple[np.ndarray, pl.DataFrame, pl.DataFrame | None]:
    """Reorder context (and labels) to the order of `trade_ids` (the windows' order)."""
    ids = pl.DataFrame({"trade_id": pl.Series(list(trade_ids)).cast(context["trade_id"].dtype)})
    if ids["trade_id"].n_unique() != ids.height:
        raise ValueError("trade_ids has duplicates; one window per trade")
    if windows.shape[0] != ids.height:
        raise ValueError(f"{windows.shape[0]} windows but {ids.height} trade_ids")
    out = []
    for name, frame in (("context", context), ("labels", labels)):
        if frame is None:
            out.append(None)
            continue
        joined = ids.join(frame, on="trade_id", how="left", maintain_order="left")
        absent = set(ids["trade_id"].to_list()) - set(frame["trade_id"].to_list())
        if absent:
            raise ValueError(f"{name} has no row for {len(absent)} trade(s), e.g. {sorted(map(str, absent))[:5]}")
        if joined.height != ids.height:
            raise ValueError(f"{name} has duplicate trade_id rows")
        out.append(joined)
    return windows, out[0], out[1]


def check_inputs(windows: np.ndarray, context: pl.DataFrame, labels: pl.DataFrame | None = None) -> None:
    if windows.ndim != 3 or windows.shape[2] != WINDOW_CHANNELS:
        raise ValueError(f"windows must be (n, bars, {WINDOW_CHANNELS}), got {windows.shape}")
    if not np.isfinite(windows).all():
        bad = np.unique(np.argwhere(~np.isfinite(windows))[:, 0])
        raise ValueError(f"windows contain NaN/inf in rows {bad[:10].tolist()}; drop or repair those trades")
    if context.height != windows.shape[0]:
        raise ValueError(f"{windows.shape[0]} windows but {context.height} context rows")
    if labels is not None:
        if labels.height != context.height:
            raise ValueError(f"{context.height} context rows but {labels.height} label rows")
        if "trade_id" in labels.columns and "trade_id" in context.columns and \
                not labels["trade_id"].equals(context["trade_id"], check_names=False):
            raise ValueError("labels and context are not in the same trade order; use align_inputs(...)")


def targets(labels: pl.DataFrame, config: ModelConfig) -> np.ndarray:
    """1.0 for a winning outcome else 0.0 (classification), or r_multiple (regression)."""
    if config.head == "classification":
        if labels["outcome"].null_count():
            raise ValueError(f"{labels['outcome'].null_count()} trades have no outcome; drop open trades first")
        unfilled = labels.filter(pl.col("outcome").is_in(list(UNFILLED_OUTCOMES))).height
        if unfilled:
            raise ValueError(f"{unfilled} trades never opened (outcome in {list(UNFILLED_OUTCOMES)}); "
                             "keep filled trades only")
        return labels["outcome"].is_in(list(config.positive_outcomes)).to_numpy().astype(np.float32)
    r = labels["r_multiple"].cast(pl.Float64).to_numpy()
    if not np.isfinite(r).all():
        raise ValueError(f"{int((~np.isfinite(r)).sum())} trades have no finite r_multiple; drop them first")
    return r.astype(np.float32)


def epoch_ms(values: pl.Series | np.ndarray | list) -> np.ndarray:
    """Epoch milliseconds as float64 (NaN for null) from a datetime series or array."""
    s = values if isinstance(values, pl.Series) else pl.Series(values)
    if s.dtype == pl.Object:
        raise ValueError("times must be datetimes or epoch milliseconds")
    if isinstance(s.dtype, pl.Datetime):
        s = s.dt.cast_time_unit("ms").dt.epoch("ms")
    return s.cast(pl.Float64).fill_null(float("nan")).to_numpy().astype(np.float64)


def inner_split(decision_ms: np.ndarray, exit_ms: np.ndarray | None, val_fraction: float,
                min_val: int) -> tuple[np.ndarray, np.ndarray]:
    """Early-stopping split: the latest val_fraction of trades by decision time validate; earlier
    trades whose exit reaches the first validation decision are dropped (purged)."""
    order = np.argsort(decision_ms, kind="stable")
    n_val = round(len(order) * val_fraction)
    if val_fraction == 0 or n_val < min_val or len(order) - n_val < min_val:
        return order, order[:0]
    val, fit = order[-n_val:], order[:-n_val]
    start = decision_ms[val[0]]
    fit = fit[decision_ms[fit] < start]
    if exit_ms is not None:
        fit = fit[np.nan_to_num(exit_ms[fit], nan=np.inf) < start]
    return fit, val


# ---------------------------------------------------------------------------------------------
# Runtime: threads, determinism, device
# ---------------------------------------------------------------------------------------------

def pick_device(config: ModelConfig) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@contextmanager
def torch_runtime(config: ModelConfig) -> Iterator[torch.device]:
    """Fixed thread count and deterministic kernels for the duration; previous settings restored."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS determinism needs it set
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(config.num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield pick_device(config)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


# ---------------------------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------------------------

def data_fingerprint(windows: np.ndarray, context: pl.DataFrame, labels: pl.DataFrame | None = None) -> str:
    """sha256 over the window bytes and every column of context and labels (name, dtype, values)."""
    h = hashlib.sha256()
    w = np.ascontiguousarray(windows, dtype=np.float32)
    h.update(repr(w.shape).encode())
    h.update(w.tobytes())
    for tag, frame in (("context", context), ("labels", labels)):
        if frame is None:
            continue
        for name in sorted(frame.columns):
            s = frame[name]
            h.update(f"{tag}.{name}:{s.dtype}".encode())
            if s.dtype.is_numeric() or isinstance(s.dtype, pl.Datetime) or s.dtype == pl.Boolean:
                h.update(s.is_null().to_numpy().tobytes())
                h.update(s.to_physical().cast(pl.Float64).fill_null(0.0).to_numpy().tobytes())
            else:
                h.update("\x1f".join("\x00" if v is None else str(v) for v in s.to_list()).encode())
    return h.hexdigest()


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

