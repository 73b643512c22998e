"""Alert notifications: the outbox of deliveries and (in the alerts branch) the sinks."""
