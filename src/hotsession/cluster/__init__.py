"""Cluster mode: many machines on Ray, shared state in Postgres (docs/cluster.md).

:mod:`~hotsession.cluster.node` is the host actor (one per Ray node, wrapping the engine);
:mod:`~hotsession.cluster.hub` the API daemon's router (:class:`ClusterHub`);
:mod:`~hotsession.cluster.api` the HTTP app in cluster mode; :mod:`~hotsession.cluster.placement`
where a new session goes; :mod:`~hotsession.cluster.wire` what crosses Ray;
:mod:`~hotsession.cluster.streams` a node's streams pulled through Ray Client (``ray://``);
:mod:`~hotsession.cluster.tenants` a node's tenants (users, secrets, config dirs, set up on its
machine); and
:mod:`~hotsession.cluster.service` what ``hotsession serve --cluster`` builds. Nothing here is
imported in single-machine mode (Ray is the ``cluster`` extra).
"""
