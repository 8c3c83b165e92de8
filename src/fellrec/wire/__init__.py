"""The wire between fellrec's own long-lived processes: messages, security and the RPC carrier.

Two fellrec processes answer others over a network connection: the block server that hosts split
models' middle blocks (:mod:`fellrec.serving.block_server`, ``model.transport: process``) and the
client worker beside a Flower SuperNode (:mod:`fellrec.deploy.client_worker`). Both use this
package, and nothing else, for what crosses:

- :mod:`fellrec.wire.codec`: a message is a safetensors blob (tensors, typed and bounds-checked)
  whose metadata holds the control values as JSON. Nothing received is unpickled.
- :mod:`fellrec.wire.security`: addresses, the shared key, TLS settings (server certificate
  verification, optionally client certificates: mutual TLS).
- :mod:`fellrec.wire.rpc`: gRPC as the carrier, the server's side (TLS, HTTP/2 framing, message
  size limits, handshake timeouts, connections handled without blocking each other);
- :mod:`fellrec.wire.peers`: the caller's side (a connection as one stream, errors that name the
  setting to change).
"""
