"""Secure aggregation (``federation.secure_aggregation=secaggplus``): SecAgg+ (Bell et al., CCS 2020)
on Flower's Message API, built on Flower's crypto primitives.

- :mod:`.scheme`: parameters, neighbour graph, masked-vector layout, quantisation error bound;
- :mod:`.node`: the ClientApp's stages (keys, shares, masked reply, unmask shares);
- ``strategies/secaggplus.py``: the server's stages around any of our strategies.
"""
