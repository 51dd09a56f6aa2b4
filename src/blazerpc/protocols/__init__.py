"""Adapters that serve the same models over other wire protocols: KServe v2 (gRPC and REST)
and JSON-RPC. Each only translates its wire format to keyword arguments and back; the shared
runners validate, batch and map errors, whichever protocol a call came in on."""
