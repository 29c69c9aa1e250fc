"""The live video app of stream_ssd.py: frame sources (OpenCV), the threaded pipeline, the Qt window."""
