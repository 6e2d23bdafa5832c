"""Baseline detectors."""
