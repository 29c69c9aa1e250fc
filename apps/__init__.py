"""Applications over the run-time (DESIGN.md floor 5): the video app and the dataset doctor."""
