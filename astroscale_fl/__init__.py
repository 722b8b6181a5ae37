"""AstroScale FL: federated learning for astronomical survey catalogs, built on Flower.

The package is laid out in the order a star passes through it, from catalog to prediction:

``data``           catalogs (``data.sources``: Hipparcos ships with the package), learning tasks
                   (``data.tasks``), the held-out test split and node partitions (``data.split``),
                   tables on disk (``data.tables``), each node's rows (``data.nodes``,
                   ``data.node_arrays``) and the memory-mapped tensor files (``data.tensor_files``)
``preprocessing``  fit/transform steps with inspectable, serialisable state, fitted from mergeable
                   statistics (one table, the nodes' statistics round, or a public reference)
``learning``       torch models, the local training loops (plain, stacked/vectorised, CUDA graphs)
``federation``     the wire protocol, the round loop the ServerApp drives, the node-side handlers
                   the ClientApp calls, the in-process and Ray simulation engines, checkpoints
``privacy``        DP-SGD with a lifetime ledger, node-level DP, DP statistics, privacy floors
``export``         write and read a model directory (weights, preprocessing, model card), predict
``serve``          the HTTP predict service
``deploy``         SuperLink/SuperNode deployment helpers (certificates, node data, warm runtime)
``simulator``      a survey-catalog simulator;  ``ingest``: download real survey catalogs

``cli`` (``astroscale-fl``), ``train`` (the Hydra application) and ``centralized`` stay at the top;
the run's checks (``run_config``, ``config_checks``) sit below the federation; the config tree
(``config``, ``config_schema``) and the one-line errors and atomic files every stage uses
(``errors``, ``atomic``) at the bottom. ``tests/test_layers.py`` holds the order.
"""

__version__ = "0.1.0"
