import html
import os
import re
import shutil
import struct
import subprocess
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from qml_pipeline.view.cards import context_cards
from qml_pipeline.view.pattern_cards import pattern_cards
from qml_pipeline.trades.metrics import equity_curve, summarize
from qml_pipeline.research.gates import GatePart, make_gate
from qml_pipeline.research.overlay import apply_overlay
from qml_pipeline.view.report import REPORT_FILE, write_report
from qml_pipeline.store.schemas import TS
from tests.view.test_cards import AS_OF, H, funding_frame, klines_frame, liq_frame, oi_frame

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _trades(n: int = 60) -> pl.DataFrame:
    rng = np.random.default_rng(7)
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    outcome = rng.choice(["WIN", "LOSS", "TIMEOUT"], size=n, p=[0.45, 0.45, 0.10])
    r = np.where(outcome == "WIN", 2.0, np.where(outcome == "LOSS", -1.0, 0.2)) - 0.05
    times = [t0 + timedelta(days=12 * i) for i in range(n)]
    return pl.DataFrame({
        "trade_id": [f"T{i:03d}" for i in range(n)], "symbol": rng.choice(["BTCUSDT", "ETHUSDT"], size=n),
        "timeframe": "4h", "direction": rng.choice(["BEARISH", "BULLISH"], size=n), "decision_time": times,
        "exit_time": [t + timedelta(hours=30) for t in times], "outcome": outcome, "r_multiple": r,
        "gross_r_multiple": r + 0.05, "base_confidence": rng.uniform(0.4, 0.9, size=n)},
        schema_overrides={"decision_time": TS, "exit_time": TS})


def _features(trades: pl.DataFrame) -> pl.DataFrame:
    rng = np.random.default_rng(11)
    n = trades.height
    win = (trades["outcome"] == "WIN").to_numpy()
    return pl.DataFrame({
        "trade_id": trades["trade_id"], "funding_rate": rng.normal(0.0001, 0.00015, n) + win * 0.0001,
        "funding_interval_hours": np.full(n, 8.0), "oi_change_24h": rng.normal(0, 6, n) + win * 3,
        "distance_to_liq_cluster": np.where(rng.uniform(size=n) < 0.3, np.nan, rng.uniform(0, 4, n))})


def _inputs(tmp_path: Path) -> dict:
    trades = _trades()
    feats = _features(trades)
    overlay = apply_overlay(trades, feats)
    funding = funding_frame([("BTCUSDT", AS_OF - 2 * H, 0.00021, 8), ("ETHUSDT", AS_OF - 20 * H, -0.0002, 8)])
    oi = oi_frame("BTCUSDT", [100.0] * 24 + [103.2])
    klines = pl.concat([klines_frame("BTCUSDT", 96_100.0), klines_frame("ETHUSDT", 3_400.0)])
    liq = liq_frame("BTCUSDT", AS_OF - 2 * H, [(95_200.0, 10.0, 0.0), (101_000.0, 0.0, 10.0)], ref=96_000.0)
    ctx = context_cards(funding, oi, liq, klines, as_of=AS_OF)
    cards = pattern_cards(trades, overlay, pl.DataFrame({"trade_id": [trades["trade_id"][-1]],
                                                         "probability": [0.61], "model_version": ["m1"]}),
                          limit=3)
    base = trades.join(overlay.select("trade_id", "multiplier", "adjusted_confidence"), on="trade_id")
    curves = {"baseline": equity_curve(base), "overlay (sizing)": equity_curve(base, size_col="multiplier"),
              "overlay (filtering)": equity_curve(base.filter(pl.col("adjusted_confidence") >= 0.5))}
    per_year = summarize(base, by=["year"])
    values = trades.select("trade_id", "outcome").join(
        feats.with_columns((pl.col("funding_rate") * 8 / pl.col("funding_interval_hours")).alias("funding_rate_8h"))
        .drop("funding_rate", "funding_interval_hours"), on="trade_id")
    from qml_pipeline.research.phase9 import winners_vs_losers
    wvl = winners_vs_losers(trades, feats, ["oi_change_24h", "distance_to_liq_cluster"])
    dq = pl.DataFrame({"table_name": ["open_interest", "klines"], "symbol": ["BTCUSDT", "BTCUSDT"],
                       "series": ["", "1h"], "sources": ["synthetic", "synthetic"], "rows": [25, 100],
                       "missing_rows": [3, 0], "completeness": [0.9, 1.0], "duplicate_rows": [0, 0],
                       "zero_rows": [1, 0], "gaps": [1, 0], "longest_gap_minutes": [180.0, None],
                       "freshness_minutes": [5.0, 0.0]})
    g9 = make_gate("phase 9 gate", [GatePart("min_trades", False, 60, 200, "60 filled trades, need >= 200")])
    g10 = make_gate("phase 10 gate", [GatePart("win_rate_gain", True, 6.0, 5.0, "+6.00 points, need > +5.00",
                                               control="confidence alone", n=60, null_percentile=70.0, null_p95=4.0,
                                               mde=9.5, ci_low=-6.0, ci_high=9.0),
                                      GatePart("sharpe_gain", True, 0.3, 0.2, "+0.300, need > +0.200")])
    gates = [g9.as_dict(), g10.as_dict()]
    from qml_pipeline.research.evidence import evidence
    from qml_pipeline.research.phases import gate_rows
    ev = evidence(pl.concat([gate_rows("phase9", g9), gate_rows("phase10", g10)]))
    return {"context_cards": ctx, "pattern_cards": cards, "equity_curves": curves, "winners_vs_losers": wvl,
            "feature_values": values, "per_year_metrics": per_year, "data_quality": dq, "gates": gates,
            "model_summary": "fusion model m1: AUC 0.55 out of sample (synthetic)",
            "evidence_can": ev.can, "evidence_cannot": ev.cannot, "evidence_parts": ev.parts,
            "notes": ["ETHUSDT has no open interest in the sample", "synthetic data: not a market result"]}


EXTERNAL = [re.compile(p, re.IGNORECASE) for p in (r"<script", r"<link[^>]+href\s*=\s*[\"']?https?:",
                                           r"@import", r"url\(\s*[\"']?https?:", r"src\s*=\s*[\"']?https?:",
                                           r"href\s*=\s*[\"']?https?:", r"//fonts\.")]


def _assert_offline(doc: str) -> None:
    for pat in EXTERNAL:
        assert not pat.search(doc), f"external reference {pat.pattern!r} in the report"
    assert "http://" not in doc and "https://" not in doc


@pytest.fixture()
def report(tmp_path: Path) -> Path:
    return write_report(tmp_path / "out", **_inputs(tmp_path))


def test_report_is_self_contained_with_cards_and_embedded_images(report: Path):
    assert report.name == REPORT_FILE and report.exists()
    doc = report.read_text(encoding="utf-8")
    _assert_offline(doc)
    imgs = re.findall(r'<img src="([^"]+)"', doc)
    assert len(imgs) == 2  # equity curves, feature distributions
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    for src in imgs:
        import base64
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    # context cards
    assert doc.count('class="card ctx') == 6
    assert "+0.021% / 8h" in doc and ">High<" in doc and "+3.2%" in doc and ">Rising<" in doc
    assert "$95.2K" in doc and "Near" in doc
    assert 'class="card ctx stale"' in doc  # ETHUSDT's 20h-old funding
    # pattern cards
    assert doc.count('class="card pattern"') == 3
    assert "QML - " in doc and "ADJUSTED CONFIDENCE" in doc and "61% (model m1)" in doc
    # the other sections
    assert "FAILED" in doc and "PASSED" in doc and "60 filled trades, need &gt;= 200" in doc
    assert "ETHUSDT has no open interest in the sample" in doc
    assert "oi_change_24h" in doc and "win_rate" in doc and "open_interest" in doc
    assert "What this evidence can and cannot say" in doc and "win-rate gains below 9.50 points" in doc
    assert "null_p95" in doc and "ci_low_independent" in doc
    assert "not available yet" not in doc


def test_report_with_missing_inputs_says_not_available(tmp_path: Path):
    path = write_report(tmp_path, context_cards=None, pattern_cards=pl.DataFrame(), equity_curves={},
                        winners_vs_losers=None, feature_values=None, per_year_metrics=None, data_quality=None,
                        gates=None, model_summary=None, notes=[])
    doc = path.read_text(encoding="utf-8")
    _assert_offline(doc)
    assert "<img" not in doc
    for section in ("Context cards", "Pattern cards", "Equity curves", "Per-year metrics", "Model summary",
                    "Data freshness and gaps", "Decision gates", "Feature distributions",
                    "What this evidence can and cannot say"):
        assert f"{section}: not available yet" in doc


def test_distribution_plot_skips_features_without_both_groups(tmp_path: Path):
    values = pl.DataFrame({"trade_id": ["a", "b", "c", "d"], "outcome": ["WIN", "LOSS", "WIN", "TIMEOUT"],
                           "oi_change_24h": [1.0, -2.0, 3.0, None], "distance_to_liq_cluster": [None] * 4},
                          schema_overrides={"distance_to_liq_cluster": pl.Float64})
    doc = write_report(tmp_path, feature_values=values, equity_curves={"baseline": pl.DataFrame(
        schema={"exit_time": TS, "cum_r": pl.Float64})}).read_text(encoding="utf-8")
    assert doc.count("<img") == 1
    assert "Not plotted (no values for winners or for losers): distance_to_liq_cluster" in doc
    assert "Equity curves: not available yet" in doc


# ---------------------------------------------------------------- browser

def _png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) into an array."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except ImportError:
        pass
    data = path.read_bytes()
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unexpected PNG format {header}"
    bpp = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * bpp)
    out = np.zeros((height, width * bpp), dtype=np.int32)
    prev = np.zeros(width * bpp, dtype=np.int32)
    for y in range(height):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) % 256
        elif f == 1:
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) % 256
        else:
            cur = np.zeros_like(line)
            for x in range(width * bpp):
                a = cur[x - bpp] if x >= bpp else 0
                b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
                if f == 3:
                    cur[x] = (line[x] + (a + b) // 2) % 256
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                    cur[x] = (line[x] + pred) % 256
        out[y], prev = cur, cur
    return out.reshape(height, width, bpp)[:, :, :3].astype(np.uint8)


def _chromium() -> str:
    """The Chromium binary; skips when QML_SKIP_BROWSER_TESTS=1, fails (saying how to install) when absent."""
    if os.environ.get("QML_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("QML_SKIP_BROWSER_TESTS=1: the headless-Chromium report test is skipped")
    binary = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if binary is None:
        pytest.fail(f"Chromium is not installed (no {CHROMIUM}): run `apt-get install -y chromium` "
                    "(Debian package), or set QML_SKIP_BROWSER_TESTS=1 to skip the browser test")
    return binary


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path):
    binary = _chromium()
    url = report.resolve().as_uri()
    dom = _run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="card ctx') == 6
    assert dom.stdout.count('class="card pattern"') == 3
    assert len(re.findall(r'<img src="data:image/png;base64,', dom.stdout)) == 2

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    run = _run_chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1400,2400",
                        "--hide-scrollbars", url)
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 50_000, "screenshot missing or suspiciously small"
    px = _png_pixels(shot)
    assert px.shape[:2] == (2400, 1400)
    assert px.std() > 20, "the screenshot is (nearly) blank"
    # many distinct colours: text, cards and plots rendered, not a flat page
    assert len(np.unique(px.reshape(-1, 3)[::7], axis=0)) > 200


def test_report_escapes_text(tmp_path: Path):
    note = '<img src="http://x">  & <script>'
    doc = write_report(tmp_path, notes=[note]).read_text(encoding="utf-8")
    shown = re.search(r'<div class="notes"><ul><li>(.*?)</li>', doc).group(1)
    assert shown.startswith("&lt;img src=") and "&amp; &lt;script&gt;" in shown
    assert html.unescape(shown) == note
    assert "<script" not in doc and "<img src=\"http" not in doc


def test_each_gate_says_how_many_trades_and_symbols_its_verdict_rests_on(tmp_path: Path):
    from qml_pipeline.view.build import gate_dicts, verdict_basis

    trades = pl.DataFrame({"symbol": ["AUSDT", "AUSDT", "BUSDT", "CUSDT"], "outcome": ["WIN", "LOSS", "TIMEOUT",
                                                                                      "NOT_FILLED"],
                           "decision_time": [datetime(2022, 5, 1), datetime(2023, 1, 1), datetime(2024, 2, 1),
                                             datetime(2024, 3, 1)]})
    backtest = pl.DataFrame({"period": ["all", "judging"], "variant": ["baseline", "baseline"],
                             "scope": ["overall", "overall"], "trades": [3, 1]})
    basis = verdict_basis(trades, backtest)
    assert basis == {"phase9": "rests on 3 filled trades of 2 symbol(s), 2022-2024",
                     "phase10": "rests on the 1 later (out-of-sample) trades of the 3 filled trades of 2 symbol(s), "
                                "2022-2024"}
    gates = pl.DataFrame({"gate": ["phase9"], "part": ["min_trades"], "passed": [False], "gate_passed": [False],
                          "message": ["3 filled trades, need >= 200"]})
    path = write_report(tmp_path, gates=gate_dicts(gates, False, basis))
    assert "rests on 3 filled trades of 2 symbol(s), 2022-2024" in path.read_text()
