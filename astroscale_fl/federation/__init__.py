"""Federated pieces shared by the ServerApp and the ClientApp: records, rounds, statistics."""
