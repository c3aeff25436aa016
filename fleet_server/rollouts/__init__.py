"""Gated staged rollouts: plan (value objects), policy (pure gate evaluation), metrics (what
the devices measured, read from the registry), driver (advances stages from registry state).
"""
