"""The KFP pipeline (protege_pipeline.py) and its compiled YAML."""
