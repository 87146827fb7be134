"""``hotsession bench``: hotsession against every way people run Claude Code, in one run.

Modules: ``command`` (the click command), ``environment`` (temp dir, model server, CLI env),
``modes`` (baselines and transports), ``daemon`` (the daemon harness), ``http_modes``
(hotsession through its HTTP API), ``runner`` (interleaved rounds), ``stats`` (pure math),
``memory``, ``load`` (Poisson load), ``cpu`` (``--cpu``), ``relay`` (``--cpu``'s floor), ``output``.
"""
