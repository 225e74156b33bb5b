"""etcd's etcdserver: EtcdServer, the raft run loop, the applier and the wait registry."""
