// Package cluster is the peer mesh: it carries publications between RevenProx nodes over NATS
// and keeps a live view of the other nodes through heartbeats. It knows nothing of WebSockets;
// the proxy hands it topics and bytes and gets Messages back through Options.Deliver.
//
// Three modes, chosen by config.ClusterConfig:
//   - single node (no cluster keys): an embedded NATS server with no listener at all
//     (DontListen), reached in-process. No port is opened. Nothing else can reach that
//     server, so Publish returns at once and Interest only records the pattern: no
//     publication or topic subscription goes to NATS (heartbeats still do).
//   - embedded mesh (cluster.listen set): the embedded server listens for routes on
//     cluster.listen and solicits cluster.peers; gossip completes the full mesh. It also listens
//     on a loopback client port (cluster.client_listen) because a DontListen server never forms
//     routes. The node's own connection goes through that loopback port too (a socket write
//     does not hold nats.go's connection lock while the server is being scheduled; the
//     in-process pipe does).
//   - external NATS (cluster.nats_url set): nothing is embedded; the node connects to that URL
//     and reconnects forever.
//
// Routing is by interest: the proxy calls Interest for the first local subscriber of a pattern
// and Uninterest for the last, and the node holds exactly one NATS subscription per pattern on
// a connection created with NoEcho. A publication therefore crosses to a node only when that
// node subscribes to a matching pattern, never comes back to the node that published it, and
// arrives once per matching pattern; the proxy delivers it to the local subscribers of exactly
// that pattern, so no subscription sees a message twice.
//
// Concurrency: every exported method is safe for concurrent use. Interest and Uninterest may be
// called while the caller holds its own locks: they only buffer a SUB/UNSUB on the connection
// and never wait for the server. Publish never blocks on the network beyond nats.go's buffered
// write and never returns an error to the caller; failures are counted and logged (rate
// limited). Deliver is called from one dispatcher goroutine, in the order the messages arrived
// from NATS (so per publisher order is kept); it must not block for long, and must not call
// Interest or Uninterest synchronously if it would wait on a lock held by their callers. Stats
// is called from the heartbeat goroutine once per heartbeat interval. Shutdown is safe to call
// twice and waits for both goroutines of the package (dispatcher, heartbeat loop) to exit.
package cluster
