"""Generated protobuf and gRPC modules for the KServe v2 inference protocol (package `inference`)."""
