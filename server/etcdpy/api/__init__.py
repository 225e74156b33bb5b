"""gRPC services of etcd's v3 API (etcd's api/v3rpc), on top of `etcdpy.server`."""
