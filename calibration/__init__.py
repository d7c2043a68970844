"""Calibration sets, range observers, calibration tables and the quantizer."""
