"""Bringing data files from their sources to local disk: transfer, verify, extract, record."""
