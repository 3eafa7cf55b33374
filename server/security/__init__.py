"""TLS, mutual TLS and bearer-token auth for the gRPC endpoint (tls.py, tokens.py, auth.py)."""
