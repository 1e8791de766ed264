"""Capturing traffic: the transparent proxy, its frame scanner and handshake, the mitmproxy addon.

proxy (listener, upstream dial, relay), wsframes (sans-I/O RFC 6455 scanner), handshake
(the HTTP upgrade as the proxy speaks it), reach (is an endpoint up), mitm (mitmproxy addon).
"""
