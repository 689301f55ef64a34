"""Shared pytest fixtures. Helpers add theirs here; keep each set in its own module and import it."""

try:  # tests/ as a package (tests/__init__.py present) or as a plain directory on sys.path
    from tests.fake_binance import fake_binance, fake_time  # noqa: F401
except ImportError:
    from fake_binance import fake_binance, fake_time  # noqa: F401

try:
    from tests.fake_archive import fake_archive  # noqa: F401
except ImportError:
    from fake_archive import fake_archive  # noqa: F401

try:
    from tests.fake_coinglass import fake_coinglass  # noqa: F401
except ImportError:
    from fake_coinglass import fake_coinglass  # noqa: F401

try:
    from tests.fake_bybit import fake_bybit  # noqa: F401
    from tests.fake_okx import fake_okx  # noqa: F401
except ImportError:
    from fake_bybit import fake_bybit  # noqa: F401
    from fake_okx import fake_okx  # noqa: F401
