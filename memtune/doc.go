// Package memtune tunes the Go garbage collector for a node.
//
// HeapFloor keeps the collector's heap goal at or above a floor while the live heap is small.
// A node's live heap is small until it holds many connections (a few MiB), yet the messages it
// relays allocate steadily (the NATS client decodes every message's headers into a map), so with
// Go's defaults (goal = twice the live heap, never below 4 MiB) a lightly connected node that
// relays 10,000 messages/s collects several times a second, and each collection takes a share of
// the CPU and stalls allocating goroutines. Above the floor the collector runs as configured.
// The soft memory limit (set from the cgroup by the node) still applies: near it the runtime
// collects regardless of the floor.
//
// Concurrency: Start installs a process-wide hook that runs after every garbage collection, on
// the runtime's finalizer goroutine, and adjusts GOGC there; only one HeapFloor should run in a
// process. Stop may be called from any goroutine, more than once: it restores the GOGC that was
// in effect at Start, and the hook does nothing from then on.
package memtune
