"""Benchmarks that print figures (never timed unit tests): `microgpt bench ...`.

Every figure is printed beside a ceiling measured by the same command on the same
machine (memory bandwidth, matmul peak), because a shared machine is noisy and
only ratios taken in one run compare.
"""
