"""The grpcio asyncio server: model handlers, health, reflection, lifecycle."""
