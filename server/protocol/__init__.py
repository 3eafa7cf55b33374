"""The gRPC edge: servicer, stream session, decode, validate, per-request controls, encode."""
