"""Outcomes analysis for clinics that give medical massage on prescription."""

__version__ = "0.1.0"
