"""s2sim.kvm"""
