"""The ServerApp that runs on the SuperLink's side."""
