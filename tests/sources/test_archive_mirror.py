"""A local mirror of the public archive (file:// URL) is read in place with the same rules as the HTTP archive
(every zip verified against its CHECKSUM, a missing file is a gap, nothing copied into the cache), and a
fetch's CSVs parsed in one call give what parsing them one by one gives, errors still naming the file."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from qml_pipeline.sources.binance import BinanceSource
from qml_pipeline.sources.binance_archive import (METRICS_COLUMNS, ArchiveFileError, BinanceArchive, ChecksumError,
                                                  LocalMirror, archive_client, read_archive_csv, read_archive_csvs)
from tests.fake_archive import METRICS_HEADER, day_range
from tests.sources.test_binance_archive import make_archive

UTC = timezone.utc
D0 = date(2024, 1, 10)
T0 = datetime(2024, 1, 10, tzinfo=UTC)
LATER = datetime(2024, 6, 1, tzinfo=UTC)


def mirror_of(fake_archive, root: Path) -> Path:
    """The fake archive's files written in the archive's layout under `root`, each beside its CHECKSUM."""
    for path, data in fake_archive.files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if path in fake_archive.checksums:
            (target.parent / (target.name + ".CHECKSUM")).write_text(f"{fake_archive.checksums[path]}  {target.name}\n")
    return root


def test_a_local_mirror_reads_what_the_http_archive_serves_without_caching(fake_archive, fake_time, tmp_path):
    for day in day_range(D0, 3):
        fake_archive.add_metrics_day("BTCUSDT", day, header=day != D0)  # one headerless file among them
    fake_archive.add_metrics_day("BTCUSDT", D0 + timedelta(days=4))  # day 4 missing: a gap
    root = mirror_of(fake_archive, tmp_path / "mirror")
    over_http = make_archive(fake_archive, fake_time, tmp_path / "http-cache").open_interest(
        "BTCUSDT", "5m", T0, T0 + timedelta(days=5))
    client = archive_client(root.as_uri())
    assert isinstance(client, LocalMirror)
    local = BinanceArchive(client, tmp_path / "cache", now=lambda: LATER)
    df = local.open_interest("BTCUSDT", "5m", T0, T0 + timedelta(days=5))
    assert df.drop("ingested_at").equals(over_http.drop("ingested_at"))
    assert df.height == 4 * 288
    report = local.last_report
    assert [f.name for f in report.missing] == ["BTCUSDT-metrics-2024-01-13.zip"]
    assert (report.headered_files, report.headerless_files, report.files_downloaded) == (3, 1, 4)
    assert not (tmp_path / "cache").exists()  # read in place, nothing copied
    assert local.requests_needed(local.funding_files("BTCUSDT", T0, LATER)) == 0


def test_a_mirror_file_that_does_not_match_its_checksum_is_refused(fake_archive, tmp_path):
    path = fake_archive.add_metrics_day("BTCUSDT", D0)
    root = mirror_of(fake_archive, tmp_path / "mirror")
    (root / path).write_bytes((root / path).read_bytes() + b"tampered")
    local = BinanceArchive(LocalMirror(root.as_uri()), tmp_path / "cache", now=lambda: LATER)
    with pytest.raises(ChecksumError, match="BTCUSDT-metrics-2024-01-10.zip: sha256 .* does not match"):
        local.open_interest("BTCUSDT", "5m", T0, T0 + timedelta(days=1))


def test_a_mirror_url_must_be_an_existing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        LocalMirror((tmp_path / "nowhere").as_uri())
    source = BinanceSource("http://127.0.0.1:9", (tmp_path).as_uri(), cache_dir=tmp_path / "c")
    assert isinstance(source.archive_client, LocalMirror)


def test_one_parse_for_many_files_equals_parsing_each_and_a_bad_file_is_named(fake_archive, fake_time, tmp_path):
    lines = [f"2024-01-10 00:{5 * i:02d}:00,BTCUSDT,{100 + i}.5,{200 + i}.25,1,2,3,4" for i in range(6)]
    headered = (METRICS_HEADER + "\n" + "\n".join(lines[:3]) + "\n").encode()
    headerless = ("\n".join(lines[3:])).encode()  # no trailing newline
    together, headers = read_archive_csvs([headered, headerless, headered], METRICS_COLUMNS)
    one_by_one = pl.concat([read_archive_csv(c, METRICS_COLUMNS)[0] for c in (headered, headerless, headered)])
    assert together.equals(one_by_one) and headers == [True, False, True]
    assert read_archive_csvs([(METRICS_HEADER + "\n").encode()], METRICS_COLUMNS) == (None, [True])

    fake_archive.add_metrics_day("BTCUSDT", D0)
    bad = [(f"2024-01-11 00:{5 * i:02d}:00,BTCUSDT,{'oops' if i == 2 else '1.0'},2.0,1,2,3,4") for i in range(3)]
    fake_archive.add_file("data/futures/um/daily/metrics/BTCUSDT/BTCUSDT-metrics-2024-01-11.zip",
                          METRICS_HEADER + "\n" + "\n".join(bad) + "\n")
    arch = make_archive(fake_archive, fake_time, tmp_path)
    with pytest.raises(ArchiveFileError, match=r"BTCUSDT-metrics-2024-01-11.zip \(.*\): line 4, column "
                                               r"'sum_open_interest': 'oops'"):
        arch.open_interest("BTCUSDT", "5m", T0, T0 + timedelta(days=2))
