"""saec, the spiking auto-encoder compiler."""

__version__ = "0.1.0"
