"""Phase 11's inputs: the context feature vector and its normalisation (fitted on training rows only),
the settings (`ModelConfig`), input alignment and checks, targets, the early-stopping split and the
data fingerprint. No torch here."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import polars as pl


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
