"""alexnet-cli: train, evaluate and use AlexNet on your own image folders."""

__version__ = "0.1.0"
