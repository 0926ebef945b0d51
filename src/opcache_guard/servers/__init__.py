"""Launchers for the real servers the lab and the tests run on loopback."""
