"""The stream layer: every WebSocket the exporter keeps open, on one connection loop.

  tuning.py      the numbers: timings, Binance's limits, hostile-server bounds, back-off
  connection.py  the one loop (back-off, flood, connect, keep-alive pings, planned
                 reconnect, batched SUBSCRIBE) and its members; kinds fill in a few hooks
  user.py        the user data kind: listenKeys, one account or many on a connection
  events.py      user data events: parsed, applied per account, overlaid on REST snapshots
  market.py      the public market kind: mark prices per market, to a sink (issue 24 builds on it)
  manager.py     places members on connections and answers state() for the engine

Deliberately empty of imports: modules import the one they need (no cycle through here).
"""
