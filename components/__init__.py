"""Thin KFP lightweight components, one per pipeline step (see README.md)."""
