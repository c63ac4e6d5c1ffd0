"""Regional switches (issue 15): several switches, each owning the cards of some issuing
provinces, that route requests for each other's cards over NATS.

``routing`` keeps the versioned province -> region table in a NATS key-value bucket every
switch watches, ``standin`` the limits each region publishes for standing in, ``link``
carries forwarded core batches between switches (its parts: ``advices``, ``blocks``,
``catalogues``, given a ``context``). Cutting a data set into the part one region owns is
``commands/split.py``; NATS on loopback, and regions on it, are ``cluster/nats.py`` and
``cluster/regions.py``."""
