"""The ML layer: preprocessing, training and inference (numpy and scikit-learn; no SQL sessions)."""
