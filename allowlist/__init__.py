"""The dynamic allowlist: registered endpoints, their expiry, versions, export (issue 7).

Sans-I/O cores: ``addr`` (keys), ``index`` (vectorised membership), ``state`` (the set, on
event time), ``feed`` (parsing), ``export`` (formats), ``api`` (the HTTP handler). I/O at
the edges: ``store`` (SQLite), ``push`` (HTTP pusher thread), ``http`` (the server),
``sources`` (feed file and snapshot directory), ``service`` (wiring them from the config).
"""
