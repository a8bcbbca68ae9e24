"""Socket.IO transport: the catch-all namespace, payload validation, acks."""
