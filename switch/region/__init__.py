"""Regional switches (issue 15): several switches, each owning the cards of some issuing
provinces, that route requests for each other's cards over NATS.

``nats_server`` starts NATS servers (a JetStream cluster on loopback for tests and
``onecard cluster up --regions``), ``routing`` keeps the versioned province -> region table in a
NATS key-value bucket every switch watches, ``split`` cuts a data set into the part one region
owns, and ``link`` carries forwarded core batches between switches."""
