"""s2sim.arch"""
