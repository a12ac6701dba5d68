"""The API reads the same settings class as the workers (it lives in the lower room)."""

from workers.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
