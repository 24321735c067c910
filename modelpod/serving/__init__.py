"""The transport-free server core: what a transport can ask of the server."""
