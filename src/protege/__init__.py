"""protege: the SWE-Protégé method as an MLOps pipeline (synth -> sft -> rl1 -> rl2 -> eval)."""

import os

# Telemetry off and hubs offline unless the user says otherwise (no phone-home from CI or sandboxes).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

__version__ = "0.1.0"
