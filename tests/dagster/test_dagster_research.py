"""The research assets end to end on a slice of the real sample: gates stop later phases unless overridden."""

import json
from pathlib import Path

import dagster as dg
import jsonschema
import polars as pl
import pytest

from dagster_project.definitions import RESEARCH_ASSETS, RESEARCH_CHECKS
from dagster_project.defs.raw_market_data import RAW_ASSETS
from tests.dagster_runs import materialize_raw
from dagster_project.resources import (CoinglassResource, MarketDataResource, ResearchResource, TradeSourceResource,
                                       WarehouseResource)
from qml_pipeline.store import schemas
from qml_pipeline.store.warehouse import Warehouse
from qml_pipeline.view.export import load_schema

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _resources(root: Path, override: bool, export: str = "", column_map: str = "") -> dict:
    return {"warehouse": WarehouseResource(root=str(root)), "market": MarketDataResource(source="sample"),
            "trade_source": TradeSourceResource(export_path=export, column_map=column_map),
            "research": ResearchResource(override_gates=override, model_epochs=3),
            "coinglass": CoinglassResource()}


def _research(root: Path, override: bool, **kw) -> dg.ExecuteInProcessResult:
    return dg.materialize([*RAW_ASSETS, *RESEARCH_ASSETS, *RESEARCH_CHECKS], resources=_resources(root, override, **kw),
                          selection=dg.AssetSelection.assets(*RESEARCH_ASSETS) | dg.AssetSelection.checks(*RESEARCH_CHECKS),
                          raise_on_error=False, run_config=QUIET)


@pytest.fixture(scope="module")
def sample_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wh")
    result = materialize_raw(root, "BTCUSDT", "2023-09-01", "2024-06-30", resources=_resources(root, False))
    assert result.success
    # the reference detector's trades, so every test starts from them whatever ran before it on this worker
    trades = dg.materialize([*RESEARCH_ASSETS], selection=["trades"], resources=_resources(root, False),
                            raise_on_error=False, run_config=QUIET)
    assert trades.success
    return root


def _status(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    out = {}
    for e in result.all_events:
        if e.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"):
            out[e.step_key] = e.event_type_value
    return out


def test_failed_gate_stops_the_next_phase(sample_warehouse: Path) -> None:
    result = _research(sample_warehouse, override=False)
    status = _status(result)
    assert status["context_error_analysis"] == "STEP_SUCCESS"
    gates = Warehouse(sample_warehouse).read(schemas.RESEARCH_GATES)
    phase9 = gates.filter(pl.col("gate") == "phase9")
    assert phase9.height == 4 and not phase9["gate_passed"][0]  # the sample's honest answer
    assert phase9.filter(pl.col("part") == "issue_discriminates")["p_value"][0] is not None
    # the gate is a blocking check on its own asset: its step fails, the next phase does not run
    assert status["phase9_gate"] == "STEP_FAILURE"
    assert status.get("context_overlay") in ("STEP_SKIPPED", None)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "blocking asset check failed" in failure.message or "phase9_gate: passed" in str(
        failure.step_failure_data.error.message)
    gate_check = next(e for e in result.get_asset_check_evaluations()
                      if e.asset_key.to_user_string() == "phase9_gate")
    assert not gate_check.passed and gate_check.severity == dg.AssetCheckSeverity.ERROR
    assert "phase9 gate FAILED" in gate_check.description and "QML_OVERRIDE_GATES=1" in gate_check.description
    assert status.get("context_model") in ("STEP_SKIPPED", None)
    # the sensitivity runs explain the verdicts, so they run whatever the gates say
    for name in ("sensitivity_oi_lag", "sensitivity_timeouts", "sensitivity_thresholds", "sensitivity_regimes"):
        assert status[name] == "STEP_SUCCESS", name
    # the quality_<SYMBOL> checks run in the run that rebuilt data_quality, judging every raw series
    quality = [e for e in result.get_asset_check_evaluations() if e.check_name.startswith("quality_")]
    assert {e.asset_key.to_user_string() for e in quality} == {"funding_rates", "open_interest", "klines"}
    # the command bar and the report do not wait for phase 10; the pattern cards do (they show its overlay)
    assert status["context_cards"] == status["research_report"] == "STEP_SUCCESS"
    assert status.get("pattern_cards") in ("STEP_SKIPPED", None)
    export = json.loads((sample_warehouse / "exports" / "cards.json").read_text())
    assert [c["symbol"] for c in export["context_cards"]] == ["BTCUSDT", "ETHUSDT"]


def test_override_runs_every_phase_and_says_so(sample_warehouse: Path) -> None:
    result = _research(sample_warehouse, override=True)
    assert result.success, _status(result)
    wh = Warehouse(sample_warehouse)
    overlay_mat = next(m for m in result.get_asset_materialization_events()
                       if m.asset_key.to_user_string() == "context_overlay")
    assert str(overlay_mat.materialization.metadata["phase9_gate"].value).startswith("OVERRIDDEN")
    # the overridden gate stays visible: a failed WARN result, which blocks nothing
    gate_check = next(e for e in result.get_asset_check_evaluations()
                      if e.asset_key.to_user_string() == "phase9_gate")
    assert not gate_check.passed and gate_check.severity == dg.AssetCheckSeverity.WARN
    assert gate_check.description.startswith("OVERRIDDEN")
    predictions = wh.read(schemas.MODEL_PREDICTIONS)
    assert predictions.height > 0 and predictions["probability"].drop_nulls().is_between(0, 1).all()
    assert set(wh.read(schemas.MODEL_EVALUATION)["model"]) == {"base_rate", "confidence", "logistic", "overlay",
                                                                "fusion"}
    gates = wh.read(schemas.RESEARCH_GATES).filter(pl.col("gate") == "phase10")
    assert gates.height == 4 and gates["null_p95"].null_count() == 0
    # an MDE wherever the filter differs from its control (on this slice the rules may change no decision)
    assert gates.filter(pl.col("part").str.ends_with("_vs_unfiltered"))["mde"].null_count() == 0
    tuned = wh.read(schemas.OVERLAY_TUNING)
    assert tuned.filter(pl.col("chosen"))["parameter"].to_list() == ["funding_threshold", "oi_change_threshold"]
    for table in (schemas.SENSITIVITY_OI_LAG, schemas.SENSITIVITY_TIMEOUTS, schemas.SENSITIVITY_THRESHOLDS,
                  schemas.SENSITIVITY_REGIMES):
        assert wh.read(table).height > 0, table.name
        assert (wh.root / "reports" / f"{table.name}.png").exists()
    assert set(wh.read(schemas.SENSITIVITY_OI_LAG)["setting"]) == {"0 s", "60 s", "300 s", "900 s"}
    report = (wh.root / "reports" / "report.html").read_text()
    assert "QML_OVERRIDE_GATES=1" in report and "data:image/png;base64" in report
    assert "What this evidence can and cannot say" in report and "cannot be ruled out" in report
    assert wh.read(schemas.CONTEXT_OVERLAY).height == wh.read(schemas.TRADES).height
    # pattern_cards depends on model_predictions: in this one run it was built after the model
    cards = wh.read(schemas.PATTERN_CARDS)
    assert cards.height == wh.read(schemas.TRADES).height
    assert wh.read(schemas.PATTERN_CARD_ADJUSTMENTS).group_by("trade_id").len()["len"].unique().to_list() == [3]
    # the model ran past the failed gates (override): its probabilities are stored, not shown on the cards
    assert cards["model_probability"].null_count() == cards.height
    assert cards["model_gate"].str.contains("QML_OVERRIDE_GATES").all()
    jsonschema.validate(json.loads((wh.root / "exports" / "cards.json").read_text()), load_schema())
    variants = set(wh.read(schemas.MODEL_BACKTEST)["variant"])
    assert variants == {"baseline", "confidence_filter", "overlay_filter", "logistic_filter", "model_filter"}
    # every table asset reports its table's rows (Dagster's row count), and it is the stored count
    tables = {key.to_user_string(): spec.metadata["warehouse_table"] for a in RESEARCH_ASSETS
              for key, spec in ((s.key, s) for s in a.specs) if "warehouse_table" in spec.metadata}
    reported = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()
                if m.asset_key.to_user_string() in tables}
    assert len(reported) >= 15 and set(reported) <= set(tables)
    for asset, metadata in reported.items():
        assert "dagster/row_count" in metadata, asset
        stored = wh.query(f"SELECT count(*) AS n FROM {tables[asset]}")["n"][0]
        assert metadata["dagster/row_count"].value == stored, asset
    skipped = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"
               and e.asset_key.to_user_string() == "liquidations"]
    assert "is not set" in str(skipped[0].event_specific_data.asset_observation.metadata["skipped"].value)


def test_user_trade_export_is_used_and_named(sample_warehouse: Path, tmp_path: Path) -> None:
    wh = Warehouse(sample_warehouse)
    export = wh.read(schemas.TRADES).head(30).select(
        pl.col("trade_id").alias("id"), "symbol", "timeframe", "direction", "decision_time", "entry_time",
        "entry_price", "stop_price", "target_price", "exit_time", "exit_price", "r_multiple", "outcome",
        "base_confidence")
    path = tmp_path / "my_backtest.csv"
    export.with_columns(pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%SZ") for c in
                        ("decision_time", "entry_time", "exit_time")).write_csv(path)
    result = dg.materialize([*RESEARCH_ASSETS], selection=["trades"], raise_on_error=False, run_config=QUIET,
                            resources=_resources(sample_warehouse, False, export=str(path), column_map="id=trade_id"))
    assert result.success
    mat = result.get_asset_materialization_events()[0].materialization
    assert mat.metadata["source"].value == "user_export:my_backtest.csv"
    assert wh.read(schemas.TRADES).height == 30


def test_bad_trade_export_names_rows_and_writes_nothing(sample_warehouse: Path, tmp_path: Path) -> None:
    wh = Warehouse(sample_warehouse)
    before = wh.read(schemas.TRADES)
    path = tmp_path / "bad.csv"
    path.write_text("trade_id,symbol,timeframe,direction,decision_time,entry_price,stop_price,outcome\n"
                    "a,BTCUSDT,1h,SIDEWAYS,2024-01-01T00:00:00Z,100,90,WIN\n")
    result = dg.materialize([*RESEARCH_ASSETS], selection=["trades"], raise_on_error=False, run_config=QUIET,
                            resources=_resources(sample_warehouse, False, export=str(path)))
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.step_failure_data.user_failure_data.description)
    assert "SIDEWAYS" in message or "direction" in message
    assert wh.read(schemas.TRADES).equals(before)


def test_a_past_verdict_is_reproduced_from_its_snapshot(sample_warehouse: Path, tmp_path: Path) -> None:
    import shutil

    from qml_pipeline.research.reproduce import reproduce

    root = tmp_path / "wh"
    shutil.copytree(sample_warehouse, root)  # a copy reads its own files
    _research(root, override=False)  # phase 9 runs and stores its gate; phase 10 stops there
    wh = Warehouse(root)
    snapshot = wh.current_snapshot()
    stored = wh.read(schemas.RESEARCH_GATES).filter(pl.col("gate") == "phase9")
    # later the trades change (a new export, a fix): the warehouse's current state no longer gives that verdict
    wh.replace_table(schemas.TRADES, wh.read(schemas.TRADES).head(60))
    table = reproduce(wh, snapshot)
    phase9 = table.filter(pl.col("gate") == "phase9")
    assert phase9.height == stored.height and phase9["same_value"].all()
    assert phase9.filter(pl.col("part") == "min_trades")["value"][0] == stored.filter(
        pl.col("part") == "min_trades")["value"][0]
    assert wh.read(schemas.TRADES).height == 60  # reproducing wrote nothing
