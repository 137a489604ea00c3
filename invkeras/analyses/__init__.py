"""Analyses that use trained inverters: samples, representation-space distances, information."""
