"""The reliability suite runs against the same real servers as the integration suite."""

from tests.integration.conftest import stack

__all__ = ["stack"]
