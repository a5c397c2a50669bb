// Package loadgen is the engine of revenprox-bench: it opens WebSocket connections the way any
// client would (protocol v1 of RevenProx, or the NATS text protocol over a NATS server's
// WebSocket listener), drives the idle, fanout, connect and cluster scenarios, and accounts for
// every delivery (latency in an HdrHistogram, losses, duplicates and reorders from per-publisher
// sequence numbers).
//
// Concurrency rules:
//   - Each connection has exactly one reader goroutine; writes to a connection go through the
//     connection's write mutex (the publisher and the reader's PONG replies share it).
//   - A SeqTracker belongs to one subscriber's reader goroutine and is never shared; trackers are
//     summed only after every reader has exited.
//   - Latency is recorded into a ShardedHist whose shards each have their own mutex.
//   - Counters are atomics, read by the progress reporter once a second.
//   - A Run is bounded by its counts, its Duration and the caller's context; it returns only after
//     every goroutine it started has exited.
//
// Results from several worker processes are merged with Result.Merge; derived figures
// (expected deliveries, losses, rates, per-connection memory) come from Result.Summary.
package loadgen
