"""Versioned, tidy CSV results: the one way commands write and read measurements."""

from fobbench.results.schema import SCHEMA, Measurement, config_hash
from fobbench.results.store import ResultWriter, default_path, read_results

__all__ = ["SCHEMA", "Measurement", "ResultWriter", "config_hash", "default_path", "read_results"]
