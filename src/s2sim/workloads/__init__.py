"""s2sim.workloads"""
