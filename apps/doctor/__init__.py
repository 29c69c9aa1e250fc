"""The dataset doctor of analyze_dataset.py: its text report and its plots (matplotlib)."""
