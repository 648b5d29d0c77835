"""Base images of the components, from the pipeline config defaults (STYLE lesson 15)."""

from protege.config import PipelineConfig

_PIPELINE = PipelineConfig()
AGENT_IMAGE = _PIPELINE.agent_image
TRAINER_IMAGE = _PIPELINE.trainer_image
