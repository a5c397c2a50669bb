// Package topics is the pure data side of pub/sub: topic and pattern validation, wildcard
// matching (`*` one token, `>` one or more trailing tokens), ACL pattern coverage, and the local
// subscription index used for fan-out. It knows nothing of sockets or NATS.
//
// Concurrency: the validation and matching functions are pure. Index is safe for concurrent
// use; see its documentation for the locking rules of callbacks.
package topics
