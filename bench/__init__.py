"""Benchmarks: pdstack against a plain parallel-SSH critical path and against Ansible (`make bench`)."""
