"""The proxy's own endpoints: health, readiness, metrics, logs."""
