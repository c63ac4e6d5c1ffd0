"""Clusters on loopback for trying and testing onecard (nothing here runs in production):

- a throwaway PostgreSQL cluster (issue 14): one etcd and N Patroni-managed PostgreSQL nodes
  in synchronous (quorum) mode. etcd and Patroni do the consensus and the failover; this
  package only writes their configuration, starts them, waits until the cluster is ready and
  stops what it started (``onecard cluster up|status|down``). Real machines use the templates
  under ``deploy/``;
- NATS servers, a JetStream cluster (``nats.py``), and regional switches on it
  (``regions.py``, ``onecard cluster up --regions``)."""
