"""Files copied into bundles (data, not imported): sample.py (python target) and index.html (web target)."""
