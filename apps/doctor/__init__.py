"""The dataset doctor of analyze_dataset.py: its plots (matplotlib) and report."""
