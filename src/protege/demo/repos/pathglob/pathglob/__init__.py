"""Match paths against glob patterns with ** support."""

from pathglob.match import filter_paths, match, match_any

__all__ = ["filter_paths", "match", "match_any"]
__version__ = "1.0.0"
