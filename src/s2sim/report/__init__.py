"""s2sim.report"""
