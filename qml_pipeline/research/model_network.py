"""Phase 11's fusion network (a convolution + LSTM or attention stream over the OHLCV window, an MLP over
the context vector, fused into one head) and the torch runtime it trains in (threads, determinism,
device)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

# OpenMP threads that spin while they wait run ~5x slower when other processes share the cores
# (Dagster's multiprocess executor, DuckDB queries; measured on 2 cores). libgomp reads this once,
# when torch loads it, so it is set before the import and only if the user has not chosen.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
from torch import nn  # noqa: E402

from qml_pipeline.research.model_data import WINDOW_CHANNELS, ModelConfig


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
