"""The ``hotsession`` command: the daemon (``serve``), its clients and the benchmark."""
