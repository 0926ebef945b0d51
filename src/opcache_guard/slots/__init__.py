"""Slot backends. Importing this package registers every backend."""
