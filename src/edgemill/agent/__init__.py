"""The device agent: serves several verified models over gRPC, measures them, captures data.

Layout: ``dataplane`` (protocol-neutral requests) over ``models`` (load/unload within a memory budget),
``metrics`` and ``capture``; ``grpc/`` holds one thin translator per protocol (edgemill.v1, KServe V2,
SageMaker Edge Manager); ``daemon`` wires them and runs until SIGTERM.
"""
