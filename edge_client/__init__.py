"""The truck side of Haulmesh: the telemetry stream client, signer, disk spool, simulator and CLI.

It depends on the generated contracts (the ``haulmesh`` package) and public libraries only, never on
``services/``: it ships to the vehicle on its own.
"""
