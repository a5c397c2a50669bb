package proxy

// The one table of protocol v1 error codes (sent in `error` frames; the connection stays open)
// and close codes (sent in the WebSocket close frame). docs/protocol.md mirrors it.

// Error codes of `{"op":"error","code":…}` frames.
const (
	CodeBadRequest           = "bad_request"            // malformed JSON, unknown op, missing field
	CodeInvalidTopic         = "invalid_topic"          // topic or pattern breaks the naming rules
	CodeForbidden            = "forbidden"              // the connection's ACL does not allow it
	CodeRateLimited          = "rate_limited"           // publish rate exceeded; repeated → close 4029
	CodeTooManySubscriptions = "too_many_subscriptions" // limits.max_subscriptions reached
	CodeMessageTooLarge      = "message_too_large"      // the message could never be delivered
	CodeUnavailable          = "unavailable"            // the node cannot serve it now (draining)
	CodeInternal             = "internal"               // a bug; logged at ERROR
)

// CloseCode is a WebSocket close status.
type CloseCode int

// Close codes (design §4).
const (
	CloseNormal          CloseCode = 1000 // client or server ended normally
	CloseGoingAway       CloseCode = 1001 // node draining: reconnect elsewhere
	CloseProtocolError   CloseCode = 1002 // malformed WebSocket framing (unmasked, bad opcode, …)
	ClosePolicy          CloseCode = 1008 // policy violation (reserved; not sent by this version)
	CloseTooLarge        CloseCode = 1009 // frame larger than limits.max_frame_bytes
	CloseInternal        CloseCode = 1011 // unexpected server error (a bug: logged at ERROR)
	CloseTryAgainLater   CloseCode = 1013 // auth unavailable or node overloaded: retry with backoff
	CloseUnauthorized    CloseCode = 4001 // auth denied: do not retry with the same token
	CloseSlowConsumer    CloseCode = 4008 // outbound queue overflowed under policy disconnect
	CloseRateLimited     CloseCode = 4029 // publish rate exceeded repeatedly
	closeNoStatus        CloseCode = 1005 // reserved: never sent, means "no code received"
	rateLimitStrikeLimit           = 10   // consecutive rate_limited publishes before close 4029
)

// closeReasons are the short texts sent with each close code (control frames hold ≤ 123 bytes).
var closeReasons = map[CloseCode]string{
	CloseNormal:        "bye",
	CloseGoingAway:     "server draining, reconnect elsewhere",
	CloseProtocolError: "protocol error",
	ClosePolicy:        "policy violation",
	CloseTooLarge:      "frame too large",
	CloseInternal:      "internal error",
	CloseTryAgainLater: "try again later",
	CloseUnauthorized:  "unauthorized",
	CloseSlowConsumer:  "slow consumer",
	CloseRateLimited:   "rate limited",
}
