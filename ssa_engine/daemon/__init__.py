"""The engine daemon: control server, socket sessions, TLS, the relay."""
