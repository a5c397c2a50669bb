// Package proxy is the node: the HTTP listener, the WebSocket upgrade with its limits and
// authentication, protocol v1 on each connection, publish and fan-out through the topics index
// and the cluster mesh, the operational endpoints, and graceful drain.
//
// Concurrency rules:
//   - Each connection has exactly one reader goroutine (readLoop). It alone touches the
//     connection's subscriptions, publish limiter and strike count, and it alone unsubscribes
//     and releases the connection when it ends.
//   - Writes go through the connection's outbound queue, bounded in bytes. A writer goroutine
//     exists only while the queue is non-empty: it drains many frames per socket write and
//     exits. No idle writer, no per-connection channel, no per-connection timer.
//   - Server frames are complete WebSocket frames built by this package; a message frame is
//     encoded once per matching pattern and its bytes shared by every recipient's queue.
//   - Lock order: topics index lock → outbound.mu. Nothing holding outbound.mu calls into the
//     index or the network.
//   - One keepalive goroutine per node pings one connection shard per tick; read deadlines
//     (two ping intervals, extended by any frame) close dead peers.
//   - Shutdown is safe to call more than once.
package proxy
