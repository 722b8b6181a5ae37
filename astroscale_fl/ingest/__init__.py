"""Catalog ingestion from public archives (Gaia, SDSS, APOGEE, RAVE, HST, JWST).

Modules: ``transport`` (httpx client, rate limit, retries, circuit breaker), ``cache``
(content-addressed cache), ``download`` (streaming and ranged resumable downloads), ``tap``
(IVOA TAP sync/async), ``skyserver`` (SDSS SQL search), ``apogee`` (FITS extraction), ``parse``
(CSV/VOTable -> Arrow), ``schema`` (common schema + normalisation), ``sources`` (YAML registry),
``pipeline`` (one run), ``cli`` (``astroscale-fl ingest``). MAST (HST/JWST) is served by ``tap``.
"""
