"""Clients for the three stores: Postgres (tables), S3 (files) and Redis (online features)."""
