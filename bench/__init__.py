"""Benchmarks that print Tubelet's speed as ratios against the servers a user would otherwise pick.

`python -m bench` (or `make bench`) runs every row on this machine in one run; see NOTES.md
for the profiling findings that shaped the stream handler.
"""
