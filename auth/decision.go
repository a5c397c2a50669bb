package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/revenprox/revenprox/topics"
)

// Decision is what a connection may do. It is shared by every connection that presented the
// same token and must not be modified after Authenticate returns it.
type Decision struct {
	User      string
	Anonymous bool
	Subscribe []string // topic patterns the connection may subscribe to
	Publish   []string // topic patterns the connection may publish to
}

// CanSubscribe reports whether the connection may subscribe to pattern: some allowed pattern
// covers every topic pattern can match. An invalid pattern is never allowed.
func (d *Decision) CanSubscribe(pattern string) bool {
	if d == nil || topics.ValidatePattern(pattern) != nil {
		return false
	}
	for _, allowed := range d.Subscribe {
		if topics.Covers(allowed, pattern) {
			return true
		}
	}
	return false
}

// CanPublish reports whether the connection may publish to the literal topic: some allowed
// pattern matches it. An invalid or wildcard topic is never allowed.
func (d *Decision) CanPublish(topic string) bool {
	if d == nil || topics.ValidateTopic(topic) != nil {
		return false
	}
	for _, allowed := range d.Publish {
		if topics.Match(allowed, topic) {
			return true
		}
	}
	return false
}

// TokenFromRequest returns the client's token: "Authorization: Bearer X" first (the scheme is
// case-insensitive), else the query parameter token, else "". Callers must never log the
// result or the request's query string.
func TokenFromRequest(r *http.Request) string {
	if h := r.Header.Get("Authorization"); len(h) > len("Bearer ") && strings.EqualFold(h[:len("Bearer ")], "Bearer ") {
		if tok := strings.TrimSpace(h[len("Bearer "):]); tok != "" {
			return tok
		}
	}
	if r.URL == nil || r.URL.RawQuery == "" {
		return ""
	}
	return strings.TrimSpace(r.URL.Query().Get("token"))
}

// maxResponseBytes bounds a webhook response body; a longer body is a failure.
const maxResponseBytes = 1 << 20

// errInvalidResponse marks webhook bodies that break the contract; they count as failures.
var errInvalidResponse = errors.New("invalid response")

// webhookAnswer is a decoded 200 response of the webhook (design §5).
type webhookAnswer struct {
	Allow     bool
	User      string
	TTL       time.Duration // 0: absent or 0, meaning max_ttl
	Reason    string
	Subscribe []string // valid patterns only
	Publish   []string // valid patterns only
	Dropped   []string // patterns that failed validation and were left out
}

// wireAnswer is the JSON shape; pointers tell absent from zero.
type wireAnswer struct {
	Allow     *bool    `json:"allow"`
	User      string   `json:"user"`
	TTL       *float64 `json:"ttl"`
	Reason    string   `json:"reason"`
	Subscribe []string `json:"subscribe"`
	Publish   []string `json:"publish"`
}

// maxTTLSeconds keeps ttl*1e9 inside time.Duration; any ttl this long is capped by max_ttl anyway.
const maxTTLSeconds = float64(math.MaxInt64/int64(time.Second)) - 1

// decodeDecision parses a 200 webhook body. The body must be one JSON object with a boolean
// "allow"; "ttl" (seconds, fractions allowed) must not be negative. Unknown fields are ignored
// so the webhook can add fields. Invalid topic patterns are dropped (least privilege) and
// reported in Dropped rather than failing the whole answer: one bad pattern from the webhook
// must not open the breaker for every user. Errors wrap errInvalidResponse and never quote the
// body (it may echo the token).
func decodeDecision(body []byte) (webhookAnswer, error) {
	var w wireAnswer
	if err := json.Unmarshal(body, &w); err != nil {
		return webhookAnswer{}, fmt.Errorf("%w: not one JSON object of the contract's shape", errInvalidResponse)
	}
	if w.Allow == nil {
		return webhookAnswer{}, fmt.Errorf("%w: missing boolean \"allow\"", errInvalidResponse)
	}
	a := webhookAnswer{Allow: *w.Allow, User: w.User, Reason: w.Reason}
	if !a.Allow {
		return a, nil
	}
	if w.TTL != nil {
		switch ttl := *w.TTL; {
		case ttl < 0:
			return webhookAnswer{}, fmt.Errorf("%w: negative \"ttl\"", errInvalidResponse)
		case ttl > maxTTLSeconds:
			a.TTL = time.Duration(math.MaxInt64)
		default:
			a.TTL = time.Duration(ttl * float64(time.Second))
		}
	}
	a.Subscribe, a.Dropped = validPatterns(w.Subscribe, a.Dropped)
	a.Publish, a.Dropped = validPatterns(w.Publish, a.Dropped)
	return a, nil
}

func validPatterns(in, dropped []string) (valid, droppedOut []string) {
	valid = make([]string, 0, len(in))
	for _, p := range in {
		if topics.ValidatePattern(p) != nil {
			dropped = append(dropped, p)
			continue
		}
		valid = append(valid, p)
	}
	return valid, dropped
}
