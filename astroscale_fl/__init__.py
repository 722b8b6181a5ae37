"""AstroScale FL: federated learning for astronomical survey catalogs, built on Flower.

Walk through the library from data to prediction:

``sources``  read a catalog (Hipparcos ships with the package)
``tasks``    choose rows, the target and the raw inputs of a learning task
``split``    hold out the test rows and split the rest among nodes (partitions)
``preprocessing``  fit/transform steps with inspectable, serialisable state
``encoding`` turn a preprocessed frame into tensors
``models``   torch models built from config
``training`` the local training and evaluation loops (tensor slicing, seeded)
``federation``  the round loop the ServerApp drives, and record conversions
``export``   write and read a model directory (weights, preprocessing, model card)
``predict``  predictions from an exported model
"""

__version__ = "0.1.0"
