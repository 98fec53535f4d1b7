"""kit: train U-Net variants for Sartorius Cell Instance Segmentation, score exactly as the
leaderboard does, and build offline Kaggle kernels."""
