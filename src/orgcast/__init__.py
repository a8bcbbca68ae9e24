"""orgcast: multi-tenant real-time messaging over Socket.IO with a durable per-room log."""

__version__ = "0.1.0"
