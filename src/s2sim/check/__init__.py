"""s2sim.check"""
