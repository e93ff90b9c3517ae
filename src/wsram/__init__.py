"""wsram: stochastic hard-attention models trained by WS-RAM, VAR and VIMCO."""

__version__ = "0.1.0"
