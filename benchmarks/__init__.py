"""Benchmarks of wsclient against its peers: ``make bench`` (see benchmarks/run.py)."""
