"""Clearing and settlement from the committed journal (issue 16, protocols/CLEARING.md)."""
