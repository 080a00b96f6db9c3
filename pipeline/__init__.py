"""Autopack: a supervisor for autonomous coding agents, run as doit tasks over files."""

__version__ = "0.1.0"
