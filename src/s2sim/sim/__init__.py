"""s2sim.sim"""
