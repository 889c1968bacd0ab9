"""Sweeps: many models × many configurations, each one compress trial, run as Ray tasks.

``spec`` reads and validates the spec, ``runner`` runs trials on Ray, ``results`` writes trial
folders and results.json/csv, ``report`` the sweep page, ``run`` is the verb (its click command: cli/sweep.py).
"""
