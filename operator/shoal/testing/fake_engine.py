"""The fake engine now lives in the product (``shoal.devcluster.engines.fake``: `shoal dev up`
runs it behind simulated pods); this name stays for tests, benchmarks and their command
lines (``python -m shoal.testing.fake_engine`` is the same program)."""

from shoal.devcluster.engines.fake import (  # noqa: F401 - re-exported
    Behaviour,
    FakeEngine,
    FakeEngineProcess,
    main,
    serve,
    start_fake_engine,
)

if __name__ == "__main__":
    main()
