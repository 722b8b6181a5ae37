"""Deployment helpers: node data directories, test certificates and keys, SuperLink status.

A real federation runs one SuperLink at a coordinating centre and one SuperNode per survey
archive (see ``scripts/`` and the README's deployment section).
"""
