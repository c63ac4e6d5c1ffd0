"""onecard's switch: asyncio server, store, metrics, admin HTTP and CLI around the core."""

__version__ = "0.1.0"
