"""The exported model directory (weights, preprocessing, model card with digests) and predictions from it."""
