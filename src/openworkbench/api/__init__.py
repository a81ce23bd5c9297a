"""HTTP: the RPC endpoint ``/api/<method>`` and the application factory."""
