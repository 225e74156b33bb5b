"""Wire protocol: this project's own .proto files for etcd's v3 API and their generated modules.

The .proto files keep etcd's package, service, message and field names and numbers so real
etcd clients (etcdctl, python etcd3, client/v3) interoperate on the wire. The generated
``*_pb2.py`` / ``*_pb2_grpc.py`` / ``*_pb2.pyi`` are committed so that installing etcdpy needs
no code generator; ``scripts/genproto.py`` regenerates them and ``tests/unit/test_pb_fresh.py``
fails when they no longer match the .proto sources.
"""
