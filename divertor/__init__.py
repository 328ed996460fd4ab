"""Divertor: the application that wires the stages (CLI, daemon, configuration)."""
