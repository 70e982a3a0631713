"""Load generation, metrics, reports."""
