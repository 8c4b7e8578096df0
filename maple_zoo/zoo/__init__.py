"""The model zoo: named, versioned, sha256-verified prompt checkpoints in a local folder or S3.

    promote_from_mlflow_run(run_id, name, tracking_uri=...)  # a sweep's best trial -> name@vN
    entry = pull("eurosat-16shot")                           # verified, cached; entry.path, entry.card
"""

from .config import ZooConfig, load_config
from .names import parse_ref, validate_name
from .promote import Promotion, promote_checkpoint, promote_from_mlflow_run
from .pull import PulledEntry, pull

__all__ = [
    "Promotion",
    "PulledEntry",
    "ZooConfig",
    "load_config",
    "parse_ref",
    "promote_checkpoint",
    "promote_from_mlflow_run",
    "pull",
    "validate_name",
]
