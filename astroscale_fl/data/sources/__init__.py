"""Catalog sources: readers that turn a survey's files into a pandas DataFrame."""
