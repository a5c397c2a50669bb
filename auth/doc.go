// Package auth decides whether a WebSocket connection may be opened and what it may do: the
// webhook authenticator of design §5, its decision cache, the circuit breaker around the
// webhook, anonymous mode and the per-connection topic ACL.
//
// Flow of one Authenticate call: empty token → anonymous decision (when allowed) or ErrDenied;
// otherwise the decision cache (keyed by SHA-256 of the token; raw tokens are never stored,
// logged, traced or put in errors) → on a miss, one webhook call per token at a time
// (singleflight) through the circuit breaker → the answer is cached (allow for min(ttl,
// max_ttl), deny for negative_ttl; failures never). When the call fails or the breaker refuses
// it, an allow decision that expired less than stale_grace ago is served; otherwise the result
// is ErrUnavailable (fail closed, never open).
//
// Concurrency: an Authenticator is safe for concurrent use by any number of goroutines. The
// *Decision it returns is shared (the same pointer goes to every connection holding that
// token) and must be treated as read-only. Decision methods are safe for concurrent use.
// New starts no goroutine; Close stops the half-open timer, aborts in-flight webhook calls and
// closes idle keep-alive connections, and is safe to call more than once.
package auth
