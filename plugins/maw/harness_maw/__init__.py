"""harness-maw: MAW depth-routed attention (``maw``) and its depth routers (kind ``maw.router``)."""
__version__ = "0.1.0"
